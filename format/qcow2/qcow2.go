package qcow2

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"

	"vdisk/block"
)

func init() { block.Register(Format) }

// Format is the qcow2 format driver.
var Format = &block.Format{
	Name:          "qcow2",
	Probe:         probe,
	Open:          Open,
	Create:        create,
	CheckCreate:   checkCreate,
	CreateOptions: createOptions,
}

// Cache sizes used when an image is opened through the registry. The
// defaults map an 8 GiB image with 64 KiB clusters (16 L2 tables) without
// a miss, with room to spare.
var (
	DefaultL2CacheBytes       int64 = 4 << 20
	DefaultRefcountCacheBytes int64 = 1 << 20
)

// probe claims anything with the qcow2 magic, as QEMU does for versions
// 2 and up, so that an image of an unsupported version fails to open with
// a clear error instead of being taken for raw (and its guest writing
// over the header). Version 0 and 1 (the older qcow format, which has no
// driver here) still win over raw for the same reason.
func probe(head, tail []byte, name string) int {
	if len(head) >= 8 && be32(head) == magic {
		if be32(head[4:]) >= 2 {
			return 100
		}
		return 50
	}
	return 0
}

// Entry bits of L1 and L2 tables.
const (
	flagCopied     = uint64(1) << 63
	flagCompressed = uint64(1) << 62
	flagZero       = uint64(1) << 0
	offsetMask     = uint64(0x00fffffffffffe00)
	refOffsetMask  = ^uint64(511) // refcount table entries
)

// Image is an open qcow2 image.
type Image struct {
	f    block.File
	name string
	ro   bool
	opts block.OpenOptions
	h    *header

	cs          int64 // cluster size
	cbits       uint
	l2Bits      uint // log2 of entries per L2 table
	l2EntSize   int  // 8, or 16 with extended L2 entries
	ext         bool
	scBits      uint // log2 of the subcluster size (extended L2)
	rcBits      uint // log2 of the refcount width in bits
	rbBits      uint // log2 of refcounts per block
	csizeShift  uint
	csizeMask   uint64
	compOffMask uint64

	size atomic.Int64

	// mu guards all metadata below and in the caches. Reads and in-place
	// writes hold it shared; anything that changes metadata holds it
	// exclusively.
	mu          sync.RWMutex
	l1          []uint64
	l1Dirty     bool
	reftable    []uint64
	rtDirty     bool
	rtMoved     bool // reftable relocated: header must follow it
	l1Moved     bool
	headerDirty bool
	l2c, rbc    *cache
	// tables indexes the clusters the L1 and refcount tables point to,
	// for the overlap check; nil after either table changes.
	tables              atomic.Pointer[tableIndex]
	backing             block.Image
	df                  block.File      // external data file, nil without one
	dfRaw               bool            // data_file_raw: the data file is kept equal to the guest view
	pending             map[int64]int64 // cluster index -> refcount decrements due after the next metadata sync
	pendingFrees        int64           // about how many pending clusters the decrements free
	freeHint            int64           // no free cluster below this index
	reserved            [][2]int64      // cluster ranges being allocated, not yet counted
	compNext            int64           // next free byte in the cluster compressed data is packed into, 0 = none
	inflight            [][2]int64      // guest cluster ranges of allocating writes writing data without mu
	inflightDone        *sync.Cond      // on mu; an allocating write linked its clusters
	snapshots           []snapshot
	oldSnapshotTableLen int64
	bitmapDir           [2]int64 // offset and size of the bitmap directory kept valid, for the overlap check
	lazy                bool     // lazy refcounts: the dirty bit is set on disk
	corrupt             bool
	snapErr             error    // snapshot table unreadable (read-only check opens only)
	snapDropped         []string // snapshots a repairing check open discarded; Check rewrites the table
	checkOnly           bool     // opened read/write by check: only Check may change the image
	preallocOnce        sync.Once
	prealloc            bool // see metadataPreallocated
	closed              bool
	closeErr            error
	bufPool             sync.Pool // *[]byte of one cluster, see clusterBuf
}

// Open opens a qcow2 image from its container.
func Open(f block.File, opts *block.OpenOptions) (block.Image, error) {
	l2, rb, err := cacheSizes(opts)
	if err != nil {
		f.Close()
		return nil, err
	}
	img, err := open(f, opts, l2, rb)
	if err != nil {
		f.Close()
		return nil, err
	}
	return img, nil
}

// MaxCacheBytes bounds the metadata cache sizes a user may ask for. The
// caches fill lazily, so it only catches mistakes (a size in the wrong
// unit), not memory a small image would use.
const MaxCacheBytes int64 = 1 << 40

// cacheSizes picks the metadata cache sizes of an open: the options'
// l2-cache-size and refcount-cache-size, or the defaults. Sizes below four
// clusters are raised to four by the caches themselves, as QEMU raises
// them to its own minimum.
func cacheSizes(opts *block.OpenOptions) (l2, rb int64, err error) {
	l2, rb = DefaultL2CacheBytes, DefaultRefcountCacheBytes
	for _, c := range []struct {
		name string
		v    int64
		dst  *int64
	}{{"l2-cache-size", opts.L2CacheSize, &l2}, {"refcount-cache-size", opts.RefcountCacheSize, &rb}} {
		switch {
		case c.v < 0:
			return 0, 0, fmt.Errorf("qcow2: %s must not be negative", c.name)
		case c.v > MaxCacheBytes:
			return 0, 0, fmt.Errorf("qcow2: %s %s is too large (at most %s)", c.name, block.FormatSize(c.v), block.FormatSize(MaxCacheBytes))
		case c.v > 0:
			*c.dst = c.v
		}
	}
	return l2, rb, nil
}

// OpenCache is Open with explicit metadata cache sizes in bytes.
func OpenCache(f block.File, opts *block.OpenOptions, l2Bytes, refcountBytes int64) (*Image, error) {
	img, err := open(f, opts, l2Bytes, refcountBytes)
	if err != nil {
		f.Close()
		return nil, err
	}
	return img, nil
}

func open(f block.File, opts *block.OpenOptions, l2Bytes, rbBytes int64) (*Image, error) {
	fsize, err := f.Size()
	if err != nil {
		return nil, fmt.Errorf("qcow2: size: %w", err)
	}
	first := make([]byte, min(fsize, 1<<maxClusterBits))
	if _, err := f.ReadAt(first, 0); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("qcow2: reading header: %w", err)
	}
	h, err := parseHeader(first, fsize)
	if err != nil {
		return nil, err
	}
	img := &Image{f: f, name: f.Name(), ro: opts.ReadOnly, checkOnly: opts.Check && !opts.ReadOnly, opts: *opts, h: h, pending: map[int64]int64{}}
	img.inflightDone = sync.NewCond(&img.mu)
	img.cbits = uint(h.clusterBits)
	img.cs = 1 << img.cbits
	img.ext = h.incompatible&incExtL2 != 0
	img.l2EntSize = 8
	if img.ext {
		img.l2EntSize = 16
		img.scBits = img.cbits - 5
	}
	img.l2Bits = img.cbits - 3
	if img.ext {
		img.l2Bits--
	}
	img.rcBits = uint(h.refcountOrder)
	img.rbBits = img.cbits + 3 - img.rcBits
	img.initCompressedFields()
	img.size.Store(int64(h.size))
	img.corrupt = h.incompatible&incCorrupt != 0
	if img.corrupt && !img.ro {
		return nil, errors.New("qcow2: image is corrupt; cannot be opened read/write (use read-only, or repair it with 'vdisk check -r all')")
	}
	img.l2c = newCache(int(l2Bytes / img.cs))
	img.rbc = newCache(int(rbBytes / img.cs))

	// L1 table.
	img.l1 = make([]uint64, h.l1Size)
	if h.l1Size > 0 {
		buf := make([]byte, int(h.l1Size)*8)
		if err := readFull(f, buf, int64(h.l1Offset)); err != nil {
			return nil, fmt.Errorf("qcow2: L1 table at %#x: %w", h.l1Offset, err)
		}
		for i := range img.l1 {
			img.l1[i] = be64(buf[i*8:])
		}
	}
	// Refcount table.
	rtEntries := int64(h.reftableClusters) * img.cs / 8
	buf := make([]byte, rtEntries*8)
	if err := readFull(f, buf, int64(h.reftableOffset)); err != nil {
		return nil, fmt.Errorf("qcow2: refcount table at %#x: %w", h.reftableOffset, err)
	}
	img.reftable = make([]uint64, rtEntries)
	for i := range img.reftable {
		img.reftable[i] = be64(buf[i*8:])
	}
	if _, err := img.loadSnapshots(false); err != nil {
		if !opts.Check {
			return nil, err
		}
		if img.ro {
			// A read-only check goes on without the snapshots, as
			// qemu-img check does, and reports the damage.
			img.snapErr = err
		} else {
			// A repairing check keeps the sound snapshots; Check
			// rewrites the table without the others.
			if img.snapDropped, err = img.loadSnapshots(true); err != nil {
				return nil, err
			}
		}
	}
	if err := img.openDataFile(); err != nil {
		return nil, err
	}
	if h.backingFile != "" && !opts.NoBacking {
		b, err := block.OpenBacking(img.name, h.backingFile, h.backingFmt, opts)
		if err != nil {
			if img.df != nil {
				img.df.Close()
			}
			return nil, fmt.Errorf("qcow2: %w", err)
		}
		img.backing = b
	}
	if !img.ro {
		if err := img.openWritable(); err != nil {
			if img.backing != nil {
				img.backing.Close()
			}
			if img.df != nil {
				img.df.Close()
			}
			return nil, err
		}
	}
	return img, nil
}

// openWritable prepares a read-write open: an image left dirty by lazy
// refcounts gets its refcounts rebuilt first, as QEMU does, and autoclear
// bits of features this driver does not maintain are cleared so that their
// stale data is not trusted later. Persistent bitmaps are the exception:
// they are marked in use first and stay valid (see bitmap.go).
func (img *Image) openWritable() error {
	img.mu.Lock()
	defer img.mu.Unlock()
	var keepAutoclear uint64
	if img.h.version >= 3 {
		// A check open changes no guest data, so its bitmaps stay
		// consistent.
		keep, err := img.keepBitmaps(!img.checkOnly)
		if err != nil {
			return err
		}
		if keep {
			keepAutoclear |= autoclearBitmaps
		}
	}
	// A check open leaves a dirty image to Check, which repairs only what
	// it is asked to, as qemu-img check does.
	if img.h.incompatible&incDirty != 0 && !img.checkOnly {
		if _, err := img.checkLocked(block.RepairAll, true); err != nil {
			return fmt.Errorf("qcow2: rebuilding refcounts of a dirty image: %w", err)
		}
		// Everything on disk and the dirty bit cleared, as at close; later
		// writes set it again if lazy refcounts are on.
		if err := img.flushLocked(true); err != nil {
			return err
		}
		img.h.incompatible &^= incDirty
		img.headerDirty = true
	}
	keepAutoclear |= img.keptAutoclear()
	if img.h.version >= 3 && img.h.autoclear&^keepAutoclear != 0 {
		img.h.autoclear &= keepAutoclear
		img.headerDirty = true
	}
	if img.headerDirty {
		if err := img.writeHeader(); err != nil {
			return err
		}
		if err := img.f.Sync(); err != nil {
			return err
		}
	}
	return nil
}

func readFull(f block.File, p []byte, off int64) error {
	n, err := f.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		return fmt.Errorf("beyond the end of the file")
	}
	return err
}

// readData reads image data, treating the part past the end of the
// container as zeros (a sparse or truncated preallocated image).
func (img *Image) readData(p []byte, off int64) error {
	n, err := img.data().ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		clear(p[n:])
		return nil
	}
	return fmt.Errorf("qcow2: reading data at %#x: %w", off, err)
}

// writeHeader writes the fixed header fields (not the extensions, which do
// not change after create) in one sector-sized write.
func (img *Image) writeHeader() error {
	b, err := img.h.encode(int(img.cs))
	if err != nil {
		return err
	}
	n := v2HeaderLen
	if img.h.version >= 3 {
		n = v3HeaderLen
		if img.h.headerLength > v3HeaderLen {
			n = v3HeaderLen + 1
		}
	}
	if _, err := img.f.WriteAt(b[:n], 0); err != nil {
		return fmt.Errorf("qcow2: writing header: %w", err)
	}
	img.headerDirty = false
	return nil
}

func (img *Image) Size() int64 { return img.size.Load() }

// VMStateOffset is where QEMU keeps the VM state of a snapshot in the
// guest address space: the first byte past what the L1 table maps for the
// virtual size. qemu-io's info prints it.
func (img *Image) VMStateOffset() int64 {
	span := img.cs << img.l2Bits
	return (img.Size() + span - 1) / span * span
}
func (img *Image) ReadOnly() bool       { return img.ro }
func (img *Image) Backing() block.Image { return img.backing }

// Info reports qemu-img info's fields.
func (img *Image) Info() (*block.Info, error) {
	img.mu.RLock()
	defer img.mu.RUnlock()
	h := img.h
	info := &block.Info{
		Filename:    img.name,
		Format:      "qcow2",
		VirtualSize: img.Size(),
		ClusterSize: img.cs,
		Dirty:       h.incompatible&incDirty != 0 || img.lazy,
	}
	if h.backingFile != "" {
		info.BackingFilename = h.backingFile
		info.FullBackingFilename = block.ResolveBacking(img.name, h.backingFile)
		info.BackingFormat = h.backingFmt
	}
	if a, ok := img.f.(block.AllocatedSizer); ok {
		if n, err := a.AllocatedSize(); err == nil {
			info.ActualSize = n
		}
	} else {
		info.ActualSizeUnknown = true
	}
	for _, s := range img.snapshots {
		info.Snapshots = append(info.Snapshots, s.info())
	}
	comp := "zlib"
	if h.compressionType == compressionZstd {
		comp = "zstd"
	}
	var d block.OrderedMap
	if h.version == 2 {
		d = d.Add("compat", "0.10").Add("compression-type", comp).Add("refcount-bits", 1<<img.rcBits)
	} else {
		d = d.Add("compat", "1.1").Add("compression-type", comp).
			Add("lazy-refcounts", h.compatible&compatLazyRefcounts != 0)
		if bms := img.bitmapInfo(); len(bms) > 0 {
			d = d.Add("bitmaps", bms)
		}
		d = img.dataFileInfo(d.Add("refcount-bits", 1<<img.rcBits)).
			Add("corrupt", h.incompatible&incCorrupt != 0).
			Add("extended-l2", img.ext)
	}
	info.FormatSpecific = &block.FormatSpecific{Type: "qcow2", Data: d}
	return info, nil
}

// bitmapInfo lists the persistent dirty bitmaps as qemu-img info does
// (flags, name, granularity), while the autoclear bit says the bitmap
// extension is valid. A damaged directory lists nothing; check reports it.
func (img *Image) bitmapInfo() []any {
	d, err := img.readBitmapDir()
	if err != nil || d == nil {
		return nil
	}
	var list []any
	for _, e := range d.entries {
		names := []any{}
		if e.flags&bmFlagInUse != 0 {
			names = append(names, "in-use")
		}
		if e.flags&bmFlagAuto != 0 {
			names = append(names, "auto")
		}
		list = append(list, block.OrderedMap{}.Add("flags", names).Add("name", e.name).Add("granularity", int64(1)<<e.gbits))
	}
	return list
}

// Close writes back metadata, clears the dirty bit of lazy refcounts and
// releases the image and its backing chain.
func (img *Image) Close() error {
	img.lockMeta()
	defer img.mu.Unlock()
	if img.closed {
		return img.closeErr
	}
	img.closed = true
	var errs []error
	if !img.ro && !img.corrupt {
		// A corrupt image's metadata is not written back: it may be
		// what the overlap check refused.
		errs = append(errs, img.flushLocked(true))
	}
	if img.backing != nil {
		errs = append(errs, img.backing.Close())
	}
	if img.df != nil {
		errs = append(errs, img.df.Close())
	}
	errs = append(errs, img.f.Close())
	img.closeErr = errors.Join(errs...)
	return img.closeErr
}

// Flush writes back dirty metadata in crash-safe order and syncs.
func (img *Image) Flush() error {
	if img.ro {
		return nil
	}
	img.mu.Lock()
	defer img.mu.Unlock()
	if img.closed {
		return block.ErrClosed
	}
	return img.flushLocked(false)
}

func putBE64(b []byte, v uint64) { binary.BigEndian.PutUint64(b, v) }

func encodeTable(t []uint64) []byte {
	var b bytes.Buffer
	b.Grow(len(t) * 8)
	var w [8]byte
	for _, v := range t {
		putBE64(w[:], v)
		b.Write(w[:])
	}
	return b.Bytes()
}

var (
	_ block.Image   = (*Image)(nil)
	_ block.Resizer = (*Image)(nil)
	_ block.Checker = (*Image)(nil)
)
