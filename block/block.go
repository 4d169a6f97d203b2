// Package block is the heart of vdisk: the interface every image format
// implements, the registry that finds a format by name or by probing, and
// the protocol layer that format drivers read and write their container
// through.
//
// The shape follows QEMU's block layer. A format driver (raw, qcow2, vhd,
// mem) turns a container into a virtual disk; a protocol (a local file, an
// NBD export) provides the container. An open virtual disk is an Image.
package block

import (
	"errors"
	"io"
)

// Image is an open virtual disk. Every method is safe for concurrent use by
// many goroutines. ReadAt and WriteAt follow io.ReaderAt and io.WriterAt; an
// access that extends past Size fails with ErrOutOfRange and transfers
// nothing.
type Image interface {
	io.ReaderAt
	io.WriterAt

	// Size is the virtual size in bytes.
	Size() int64

	// Flush makes every write that completed before the call durable: data
	// and the metadata that reaches it are on stable storage when Flush
	// returns nil.
	Flush() error

	// Discard tells the image the range is no longer needed. Afterwards the
	// range reads as zeros or as its old content; formats that can free space
	// do so. It is advisory: an image that cannot discard returns nil.
	Discard(off, n int64) error

	// WriteZeroes makes the range read as zeros, without transferring zero
	// bytes where the format can avoid it. With ZeroMayUnmap the image may
	// also free the space; with ZeroFast it fails with ErrNotSupported
	// rather than fall back to writing zero bytes.
	WriteZeroes(off, n int64, flags ZeroFlags) error

	// BlockStatus describes the range starting at off as a list of extents
	// in order, covering at least the first byte and at most n bytes. It is
	// this layer's view only: a range this layer decides carries StatusData
	// and/or StatusZero; a range with neither reads from Backing (or as
	// zeros without one). MapChain resolves the chain.
	BlockStatus(off, n int64) ([]Extent, error)

	// Info reports what `vdisk info` shows about this image.
	Info() (*Info, error)

	// Backing is the image that unallocated ranges read from, or nil.
	Backing() Image

	// ReadOnly reports whether writes are refused.
	ReadOnly() bool

	// Close flushes and releases the image and its backing chain.
	Close() error
}

// ZeroFlags refine WriteZeroes.
type ZeroFlags uint8

const (
	// ZeroMayUnmap lets the image free the space behind the zeroed range.
	ZeroMayUnmap ZeroFlags = 1 << iota
	// ZeroFast asks to fail with ErrNotSupported rather than write zero bytes.
	ZeroFast
)

// Status flags of an extent, as QEMU's BDRV_BLOCK_* bits.
type Status uint8

const (
	// StatusData: the range is backed by data in this layer (or below, after MapChain).
	StatusData Status = 1 << iota
	// StatusZero: the range reads as zeros.
	StatusZero
	// StatusAllocated: the layer at Depth decides the content (qemu-img
	// map's "present"). Set by MapChain, not by drivers.
	StatusAllocated
	// StatusCompressed: the data is stored compressed, so HostOffset is not a plain mapping.
	StatusCompressed
)

// Extent is a run of bytes with a uniform status.
type Extent struct {
	Offset int64  // guest offset
	Length int64  // bytes
	Status Status // StatusData, StatusZero, ...
	// HostOffset is where the bytes sit in File, or -1 where no such
	// mapping exists (unallocated, compressed, zero clusters).
	HostOffset int64
	// File is the name of the container HostOffset refers to.
	File string
	// Depth is the number of backing layers above the one that decided the
	// content; MapChain sets it.
	Depth int
}

// Checker is implemented by images that can verify (and repair) their metadata.
type Checker interface {
	Check(mode RepairMode) (*CheckResult, error)
}

// Resizer is implemented by images whose virtual size can change.
type Resizer interface {
	// Resize sets the virtual size. Shrinking is refused unless shrink is set.
	Resize(size int64, shrink bool) error
}

// RepairMode selects what Check may fix.
type RepairMode uint8

const (
	RepairNone  RepairMode = 0
	RepairLeaks RepairMode = 1 << iota
	RepairErrors
	RepairAll = RepairLeaks | RepairErrors
)

// CheckResult uses qemu-img check's categories.
type CheckResult struct {
	Filename           string   `json:"filename"`
	Format             string   `json:"format"`
	CheckErrors        int      `json:"check-errors"`
	Corruptions        int      `json:"corruptions,omitempty"`
	Leaks              int      `json:"leaks,omitempty"`
	CorruptionsFixed   int      `json:"corruptions-fixed,omitempty"`
	LeaksFixed         int      `json:"leaks-fixed,omitempty"`
	ImageEndOffset     int64    `json:"image-end-offset,omitempty"`
	TotalClusters      int64    `json:"total-clusters,omitempty"`
	AllocatedClusters  int64    `json:"allocated-clusters,omitempty"`
	FragmentedClusters int64    `json:"fragmented-clusters,omitempty"`
	CompressedClusters int64    `json:"compressed-clusters,omitempty"`
	Messages           []string `json:"-"`
}

// Info is what `vdisk info` reports. JSON keys are qemu-img's.
type Info struct {
	Filename    string `json:"filename"`
	Format      string `json:"format"`
	VirtualSize int64  `json:"virtual-size"`
	ActualSize  int64  `json:"actual-size,omitempty"`
	// ActualSizeUnknown: the container cannot tell how much space it
	// takes (an NBD export); qemu-img then says "unavailable".
	ActualSizeUnknown   bool            `json:"-"`
	ClusterSize         int64           `json:"cluster-size,omitempty"`
	Dirty               bool            `json:"dirty-flag"`
	Encrypted           bool            `json:"encrypted,omitempty"`
	BackingFilename     string          `json:"backing-filename,omitempty"`
	FullBackingFilename string          `json:"full-backing-filename,omitempty"`
	BackingFormat       string          `json:"backing-filename-format,omitempty"`
	Snapshots           []SnapshotInfo  `json:"snapshots,omitempty"`
	FormatSpecific      *FormatSpecific `json:"format-specific,omitempty"`
	BackingImage        *Info           `json:"backing-image,omitempty"`
}

// FormatSpecific carries a format's own fields under qemu-img's
// {"type": ..., "data": {...}} envelope. Data is ordered for human output.
type FormatSpecific struct {
	Type string     `json:"type"`
	Data OrderedMap `json:"data"`
}

// SnapshotInfo describes an internal snapshot, with qemu-img's JSON keys.
type SnapshotInfo struct {
	ID          string `json:"id"`
	Name        string `json:"name"`
	VMStateSize int64  `json:"vm-state-size"`
	DateSec     int64  `json:"date-sec"`
	DateNsec    int64  `json:"date-nsec"`
	VMClockSec  int64  `json:"vm-clock-sec"`
	VMClockNsec int64  `json:"vm-clock-nsec"`
	ICount      *int64 `json:"icount,omitempty"`
}

// Errors shared by every driver. Drivers wrap them with context.
var (
	ErrOutOfRange    = errors.New("access beyond end of image")
	ErrReadOnly      = errors.New("image is read-only")
	ErrNotSupported  = errors.New("operation not supported")
	ErrClosed        = errors.New("image is closed")
	ErrUnknownFormat = errors.New("unknown format")
)

// CompressedWriter is implemented by images that can store data
// compressed (qemu-img convert -c). WriteCompressed writes whole clusters:
// off is cluster-aligned and len(p) a multiple of the cluster size (only
// the image's last cluster may be shorter).
type CompressedWriter interface {
	WriteCompressed(p []byte, off int64) error
}

// Precompressor is a CompressedWriter that compresses apart from storing,
// so that a caller that must store in order still compresses on all cores.
// Precompress compresses what WriteCompressed(p, off) would store and may
// run concurrently with anything; the function it returns stores the
// result, as WriteCompressed would. p must not change until that function
// has returned.
type Precompressor interface {
	CompressedWriter
	Precompress(p []byte, off int64) (store func() error, err error)
}
