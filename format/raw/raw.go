// Package raw is the raw format: the container's bytes are the disk's bytes.
package raw

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"

	"vdisk/block"
)

func init() { block.Register(Format) }

// Format is the raw format driver.
var Format = &block.Format{
	Name:        "raw",
	Probe:       func(head, tail []byte, name string) int { return 1 },
	Open:        Open,
	Create:      create,
	CheckCreate: checkCreate,
	// Like QEMU's raw driver: a reader has no metadata a writer could
	// make inconsistent, so it lets others write.
	ReadersShareWrite: true,
	// In qemu-img's order, which is that of its "Formatting" line.
	CreateOptions: []block.OptionSpec{
		{Name: "size", Type: block.OptSize, Help: "Virtual disk size"},
		{Name: "nocow", Type: block.OptBool, Help: "Turn off copy-on-write (valid only on btrfs)"},
		{Name: "preallocation", Type: block.OptString, Help: "Preallocation mode (allowed values: off, falloc, full)"},
		{Name: "extent_size_hint", Type: block.OptSize, Help: "Extent size hint for the image file, 0 to disable"},
	},
}

// Image is an open raw image.
type Image struct {
	f    block.File
	size atomic.Int64 // changes under Resize while I/O runs
	// hostMin is the container's length at open or at the last Resize. Only
	// writes into the last sector grow the container since, so its last
	// sector starts no earlier than hostMin-512.
	hostMin  atomic.Int64
	readOnly bool
	// probed guards the head and tail: a raw image whose format was guessed
	// must not let a guest turn it into something that probes as another
	// format.
	probed bool
	// probeMu serialises changes that reach the probed bytes, check and
	// change together: two writes each harmless alone (half a magic each)
	// would otherwise both pass the check and together forge a header.
	probeMu sync.Mutex
	// unsafe skips syncing on Flush and Close (cache=unsafe).
	unsafe bool

	closeOnce sync.Once
	closeErr  error
}

// Open wraps a container as a raw image.
func Open(f block.File, opts *block.OpenOptions) (block.Image, error) {
	size, err := f.Size()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("raw: size: %w", err)
	}
	m := &Image{f: f, readOnly: opts.ReadOnly, probed: opts.Probed, unsafe: opts.Unsafe}
	m.size.Store(sectorSize(size))
	m.hostMin.Store(size)
	return m, nil
}

// sectorSize is the virtual size of a container of n bytes. QEMU counts
// images in whole 512-byte sectors, so a file whose length is not a
// multiple of 512 is a disk a little larger: the part past the end of the
// file reads as zeros, and a write there extends the file.
func sectorSize(n int64) int64 {
	if n > maxSize {
		return n &^ 511
	}
	return (n + 511) &^ 511
}

// maxSize keeps the size rounded up to whole sectors within an int64.
const maxSize = 1<<63 - 512

// defaultExtentSizeHint is what qemu-img asks XFS for when no
// extent_size_hint is given.
const defaultExtentSizeHint = 1 << 20

// createParams are the create options, checked.
type createParams struct {
	size     int64 // rounded up to whole sectors
	prealloc string
	nocow    bool
	hint     uint32
	// hintGiven: a failure to set a hint that was asked for is worth a
	// warning; the default hint fails quietly, as in qemu-img.
	hintGiven bool
}

func parseCreate(opts block.Options) (createParams, error) {
	size := opts.Size("size", -1)
	if size < 0 {
		return createParams{}, errors.New("raw: image size must be specified")
	}
	if size > maxSize {
		return createParams{}, fmt.Errorf("raw: image size %d is too large", size)
	}
	p := createParams{
		// qemu-img rounds raw images up to whole sectors; so do we, so
		// that both tools make the same file.
		size:     (size + 511) &^ 511,
		prealloc: opts.String("preallocation", "off"),
	}
	switch p.prealloc {
	case "off", "falloc", "full":
	default:
		return createParams{}, fmt.Errorf("raw: invalid preallocation mode '%s' (allowed: off, falloc, full)", p.prealloc)
	}
	hint := opts.Size("extent_size_hint", defaultExtentSizeHint)
	if hint > 1<<32-1 {
		return createParams{}, errors.New("raw: extent size hint is too large (at most 4294967295 bytes)")
	}
	p.hint, p.hintGiven = uint32(hint), opts.Has("extent_size_hint") && hint != 0
	p.nocow = opts.Bool("nocow", false)
	return p, nil
}

func checkCreate(name string, opts block.Options) (int64, error) {
	p, err := parseCreate(opts)
	return p.size, err
}

func create(f block.File, opts block.Options) error {
	p, err := parseCreate(opts)
	if err != nil {
		return err
	}
	size := p.size
	// Hints for the empty file, which is all that btrfs takes NOCOW on;
	// both are optimisations, so a file system without them is no error.
	if h, ok := f.(block.CreateHinter); ok {
		if p.nocow {
			h.SetNoCOW()
		}
		if err := h.SetExtentSizeHint(p.hint); err != nil && p.hintGiven {
			fmt.Fprintf(os.Stderr, "vdisk: warning: %s: failed to set extent size hint: %v\n", f.Name(), err)
		}
	}
	if err := f.Truncate(size); err != nil {
		return fmt.Errorf("raw: truncate: %w", err)
	}
	switch p.prealloc {
	case "off":
		// Like QEMU's file-posix (allocate_first_block), write the first
		// block so that probing the alignment of the new file works and
		// `map` shows the same extents as for an image qemu-img made.
		if err := allocateFirstBlock(f, size); err != nil {
			return fmt.Errorf("raw: %w", err)
		}
	case "falloc":
		a, ok := f.(block.Allocator)
		if !ok {
			return errors.New("raw: preallocation=falloc is not supported by this container")
		}
		if err := a.Allocate(0, size); err != nil {
			return fmt.Errorf("raw: preallocation=falloc: %w", err)
		}
	case "full":
		if err := block.WriteZeroBytes(f, 0, size); err != nil {
			return fmt.Errorf("raw: preallocation=full: %w", err)
		}
	}
	return nil
}

// allocateFirstBlock writes zeros over the first 4 KiB, or the first
// sector of an image smaller than that.
func allocateFirstBlock(f block.File, size int64) error {
	if size == 0 {
		return nil
	}
	n := int64(4096)
	if size < n {
		n = 512
	}
	if _, err := f.WriteAt(make([]byte, n), 0); err != nil {
		return fmt.Errorf("allocating the first block: %w", err)
	}
	return nil
}

func (m *Image) Size() int64          { return m.size.Load() }
func (m *Image) ReadOnly() bool       { return m.readOnly }
func (m *Image) Backing() block.Image { return nil }

// File is the container, for exports that can pass the kernel straight to it.
func (m *Image) File() block.File { return m.f }

func (m *Image) ReadAt(p []byte, off int64) (int, error) {
	if err := block.CheckRange(off, int64(len(p)), m.Size()); err != nil {
		return 0, err
	}
	n, err := m.f.ReadAt(p, off)
	if n == len(p) {
		return n, nil
	}
	if err != nil && n < len(p) {
		// A container shorter than the size read at open (truncated behind
		// our back) reads as zeros there rather than failing.
		if fe := errorsIsEOF(err); fe {
			clear(p[n:])
			return len(p), nil
		}
	}
	return n, err
}

func errorsIsEOF(err error) bool { return errors.Is(err, io.EOF) }

func (m *Image) WriteAt(p []byte, off int64) (int, error) {
	if m.readOnly {
		return 0, block.ErrReadOnly
	}
	if err := block.CheckRange(off, int64(len(p)), m.Size()); err != nil {
		return 0, err
	}
	if m.probed && m.touchesProbe(off, int64(len(p))) {
		m.probeMu.Lock()
		defer m.probeMu.Unlock()
		if err := m.guardProbe("this write", p, off, int64(len(p)), -1); err != nil {
			return 0, err
		}
	}
	return m.f.WriteAt(p, off)
}

// touchesProbe reports whether a change of n bytes at off may reach the
// bytes probing looks at: the head, and the container's last sector,
// where VHD keeps its footer.
func (m *Image) touchesProbe(off, n int64) bool {
	return n > 0 && (off < block.ProbeHeadSize || off+n > m.hostMin.Load()-block.ProbeTailSize)
}

// guardProbe refuses a change that would make the container probe as
// another format: the attack where a guest writes a qcow2 header naming a
// host file as backing into its raw disk, or a VHD footer into its last
// sector. The change puts p at off, or n zero bytes when p is nil, and
// leaves the container newLen bytes long (-1: as long as the write makes
// it). It judges the container as it would be afterwards, head and tail
// as a whole. what names the change in the error. Callers hold probeMu.
func (m *Image) guardProbe(what string, p []byte, off, n, newLen int64) error {
	cur, err := m.f.Size()
	if err != nil {
		return err
	}
	if newLen < 0 {
		newLen = max(cur, off+n)
	}
	// Past the current end, the container reads as zeros (ReadAt is
	// short there), which is what extending it leaves.
	head := make([]byte, min(newLen, block.ProbeHeadSize))
	if _, err := m.f.ReadAt(head, 0); err != nil && !errorsIsEOF(err) {
		return err
	}
	tailOff := newLen - min(newLen, block.ProbeTailSize)
	tail := make([]byte, newLen-tailOff)
	if _, err := m.f.ReadAt(tail, tailOff); err != nil && !errorsIsEOF(err) {
		return err
	}
	overlay(head, 0, p, off, n)
	overlay(tail, tailOff, p, off, n)
	if f, _ := block.Probe(head, tail, m.f.Name()); f != nil && f.Name != "raw" {
		return fmt.Errorf("raw: %s would make the image look like %s; "+
			"the format was probed, so this is refused: open it with -f raw to allow it", what, f.Name)
	}
	return nil
}

// overlay puts the part of the change (p at off, or n zeros when p is
// nil) that falls inside buf, which holds the bytes at bufOff.
func overlay(buf []byte, bufOff int64, p []byte, off, n int64) {
	start, end := max(off, bufOff), min(off+n, bufOff+int64(len(buf)))
	if start >= end {
		return
	}
	if p == nil {
		clear(buf[start-bufOff : end-bufOff])
		return
	}
	copy(buf[start-bufOff:end-bufOff], p[start-off:end-off])
}

func (m *Image) Flush() error {
	if m.readOnly || m.unsafe {
		return nil
	}
	return m.f.Sync()
}

func (m *Image) Discard(off, n int64) error {
	if m.readOnly {
		return block.ErrReadOnly
	}
	if err := block.CheckRange(off, n, m.Size()); err != nil {
		return err
	}
	p, ok := m.f.(block.HolePuncher)
	if !ok {
		return nil
	}
	if m.probed && m.touchesProbe(off, n) {
		m.probeMu.Lock()
		defer m.probeMu.Unlock()
		cur, err := m.f.Size()
		if err != nil {
			return err
		}
		if m.guardProbe("discarding", nil, off, n, cur) != nil {
			// Discard is advisory: keeping the old content is allowed,
			// and better than failing a guest's trim.
			return nil
		}
	}
	if err := p.PunchHole(off, n); err != nil && !errors.Is(err, block.ErrNotSupported) {
		return err
	}
	return nil
}

// WriteZeroes zeroes without writing zero bytes where the container can:
// with ZeroMayUnmap by punching a hole, else with a zeroed range that stays
// allocated (FALLOC_FL_ZERO_RANGE), and only without ZeroFast by writing
// zeros.
func (m *Image) WriteZeroes(off, n int64, flags block.ZeroFlags) error {
	if m.readOnly {
		return block.ErrReadOnly
	}
	if err := block.CheckRange(off, n, m.Size()); err != nil {
		return err
	}
	if n == 0 {
		return nil
	}
	if m.probed && m.touchesProbe(off, n) {
		// Zeros can complete a header too (a version field of 0x0103
		// with its 0x01 zeroed), and a zeroed range can extend the file
		// so that other bytes become its last sector.
		m.probeMu.Lock()
		defer m.probeMu.Unlock()
		if err := m.guardProbe("zeroing", nil, off, n, -1); err != nil {
			return err
		}
	}
	if flags&block.ZeroMayUnmap != 0 {
		if p, ok := m.f.(block.HolePuncher); ok {
			if err := p.PunchHole(off, n); err == nil {
				return nil
			}
		}
	}
	if z, ok := m.f.(block.ZeroRanger); ok {
		if err := z.ZeroRange(off, n); err == nil {
			return nil
		}
	}
	if flags&block.ZeroFast != 0 {
		return block.ErrNotSupported
	}
	return block.WriteZeroBytes(m.f, off, n)
}

// BlockStatus maps data and holes of the container one to one; the
// container reports what lies past its end (the rest of a partial last
// sector) as zeros.
func (m *Image) BlockStatus(off, n int64) ([]block.Extent, error) {
	if err := block.CheckRange(off, n, m.Size()); err != nil {
		return nil, err
	}
	if n == 0 {
		return nil, nil
	}
	if dm, ok := m.f.(block.DataMapper); ok {
		return dm.MapData(off, n)
	}
	return []block.Extent{{Offset: off, Length: n, Status: block.StatusData, HostOffset: off, File: m.f.Name()}}, nil
}

func (m *Image) Info() (*block.Info, error) {
	info := &block.Info{Filename: m.f.Name(), Format: "raw", VirtualSize: m.Size()}
	if a, ok := m.f.(block.AllocatedSizer); ok {
		if n, err := a.AllocatedSize(); err == nil {
			info.ActualSize = n
		}
	} else {
		info.ActualSizeUnknown = true
	}
	return info, nil
}

// Resize changes the container's length. Growing adds zeros.
func (m *Image) Resize(size int64, shrink bool) error {
	if m.readOnly {
		return block.ErrReadOnly
	}
	if size < 0 {
		return fmt.Errorf("raw: invalid size %d", size)
	}
	if size < m.Size() && !shrink {
		return errors.New("raw: use the --shrink option to shrink the image; data beyond the new size is lost")
	}
	// Resizing moves the last sector: shrinking can make a VHD footer
	// planted inside the disk the container's last 512 bytes.
	m.probeMu.Lock()
	defer m.probeMu.Unlock()
	if m.probed {
		if err := m.guardProbe("resizing", nil, 0, 0, size); err != nil {
			return err
		}
	}
	if err := m.f.Truncate(size); err != nil {
		return fmt.Errorf("raw: resize: %w", err)
	}
	m.hostMin.Store(size)
	m.size.Store(sectorSize(size))
	return nil
}

func (m *Image) Close() error {
	m.closeOnce.Do(func() {
		var ferr error
		if !m.readOnly && !m.unsafe {
			ferr = m.f.Sync()
		}
		m.closeErr = errors.Join(ferr, m.f.Close())
	})
	return m.closeErr
}

var (
	_ block.Image   = (*Image)(nil)
	_ block.Resizer = (*Image)(nil)
)
