// Package vhd is the VHD format (Microsoft Virtual Hard Disk, QEMU's
// "vpc"): fixed, dynamic and differencing disks.
//
// Footer, dynamic header and the whole block allocation table are read
// once at open and kept in memory; sector bitmaps of recently used blocks
// are cached. Block allocation is ordered so that a crash leaves at worst
// a leaked block: new footer, block data and bitmap, fsync, then the BAT
// entry.
package vhd

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"

	"vdisk/block"
)

func init() { block.Register(Format) }

// Format is the VHD format driver.
var Format = &block.Format{
	Name:        "vhd",
	Aliases:     []string{"vpc"},
	Probe:       probe,
	Open:        Open,
	Create:      create,
	CheckCreate: checkCreate,
	CreateOptions: []block.OptionSpec{
		{Name: "size", Type: block.OptSize, Help: "Virtual disk size"},
		{Name: "subformat", Type: block.OptString, Help: "Type of virtual hard disk format (allowed values: dynamic, fixed; default dynamic)"},
		{Name: "force_size", Type: block.OptBool, Help: "Keep the exact size instead of rounding it to a CHS geometry (default off)"},
		{Name: "block_size", Type: block.OptSize, Help: "Block size of dynamic and differencing disks (a power of two from 4K to 1G; default 2M)"},
		{Name: "backing_file", Type: block.OptString, Help: "Parent image of a differencing disk"},
		{Name: "backing_fmt", Type: block.OptString, Help: "Format of the parent image (vhd)"},
	},
}

// probe recognises the footer copy at offset 0 (dynamic and differencing)
// or a footer of a fixed disk in the last sector. Like QEMU, a footer at
// the end only counts for fixed disks, so that a guest writing the last
// sector of a raw disk cannot make it a differencing disk naming a host file.
func probe(head, tail []byte, name string) int {
	if len(head) >= 8 && string(head[:8]) == footerCookie {
		return 100
	}
	if len(tail) >= footerSize {
		t := tail[len(tail)-footerSize:]
		if string(t[:8]) == footerCookie && binary.BigEndian.Uint32(t[60:]) == typeFixed {
			return 100
		}
	}
	return 0
}

// Image is an open VHD.
type Image struct {
	f      block.File
	name   string
	footer *Footer
	// footerRaw is the footer as read; moving it keeps every byte,
	// reserved ones included, so that it stays equal to the copy at 0.
	footerRaw []byte
	hdr       *Header // nil for fixed disks
	hdrRaw    []byte  // the header as read, for a checksum repair that keeps every byte
	size      int64
	dtype     uint32
	readOnly  bool // guest writes refused (read-only open, or damage)
	fileRO    bool // the container itself is read-only
	// damage lists problems found at open that check -r all repairs;
	// while any exist, the image refuses writes.
	damage      []string
	footerDirty bool // the footer at the end (or its copy) needs rewriting
	headerDirty bool

	blockSize  int64
	bmSize     int64
	blockTotal int64 // bitmap + data

	meta     []region // footer copy, header, BAT, locators
	batMu    sync.RWMutex
	bat      []uint32
	badEntry map[uint32]string
	nextFree int64 // where the footer sits: the next block goes here

	// ioMu is held shared by guest I/O and exclusively by Check. Under it,
	// allocMu serialises block allocation and a block's stripe its bitmap.
	ioMu    sync.RWMutex
	allocMu sync.Mutex
	stripes [64]sync.Mutex
	bitmaps *bitmapCache

	parent      block.Image
	parentName  string // as found in the locator
	parentFull  string
	parentFrom  string // which locator found it (or would, opened without the chain)
	parentDepth int

	closeOnce sync.Once
	closeErr  error
}

// Open opens a VHD container.
func Open(f block.File, opts *block.OpenOptions) (block.Image, error) {
	m, err := open(f, opts)
	if err != nil {
		f.Close()
		return nil, err
	}
	return m, nil
}

func readFull(f block.File, p []byte, off int64) error {
	n, err := f.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return err
}

func open(f block.File, opts *block.OpenOptions) (*Image, error) {
	fsize, err := f.Size()
	if err != nil {
		return nil, fmt.Errorf("vhd: size: %w", err)
	}
	if fsize < footerSize {
		return nil, fmt.Errorf("vhd: file of %d bytes is too small for a VHD footer", fsize)
	}
	m := &Image{f: f, name: f.Name(), readOnly: opts.ReadOnly, fileRO: opts.ReadOnly, bitmaps: newBitmapCache(bitmapCacheEntries)}

	head := make([]byte, footerSize)
	tail := make([]byte, footerSize)
	if err := readFull(f, head, 0); err != nil {
		return nil, fmt.Errorf("vhd: reading footer copy: %w", err)
	}
	tailOff := fsize - footerSize
	if err := readFull(f, tail, tailOff); err != nil {
		return nil, fmt.Errorf("vhd: reading footer: %w", err)
	}
	tf, terr := parseFooter(tail)
	hf, herr := parseFooter(head)
	headHasCookie := bytes.Equal(head[:8], []byte(footerCookie))
	switch {
	case terr == nil && tf.DiskType == typeFixed:
		m.footer, m.footerRaw = tf, tail
	case terr == nil:
		m.footer, m.footerRaw = tf, tail
		if herr != nil {
			m.damage = append(m.damage, fmt.Sprintf("footer copy at offset 0 is damaged (%v)", herr))
			m.footerDirty = true
		} else if !bytes.Equal(head, tail) {
			m.damage = append(m.damage, "footer copy at offset 0 differs from the footer at the end of the file")
			m.footerDirty = true
		}
	case herr == nil && hf.DiskType != typeFixed:
		m.footer, m.footerRaw = hf, head
		m.damage = append(m.damage, fmt.Sprintf("footer at the end of the file (offset %#x) is damaged (%v); using the copy at offset 0", tailOff, terr))
		m.footerDirty = true
	case headHasCookie && herr != nil && !bytes.Equal(tail[:8], []byte(footerCookie)):
		return nil, fmt.Errorf("vhd: %w (copy at offset 0; no footer at the end of the file)", herr)
	default:
		return nil, fmt.Errorf("vhd: %w (at the end of the file, offset %#x)", terr, tailOff)
	}
	ft := m.footer
	m.dtype = ft.DiskType
	if m.size, err = ft.virtualSize(); err != nil {
		return nil, fmt.Errorf("vhd: %w", err)
	}
	if m.dtype == typeFixed {
		if m.size > tailOff {
			return nil, fmt.Errorf("vhd: fixed disk of %d bytes, but the file holds only %d bytes of data", m.size, tailOff)
		}
		m.finishOpen()
		return m, nil
	}
	if err := m.openDynamic(fsize, opts); err != nil {
		return nil, err
	}
	m.finishOpen()
	if m.dtype == typeDifferencing {
		if opts.NoBacking {
			m.locateParent()
		} else if err := m.openParent(opts); err != nil {
			return nil, err
		}
	}
	return m, nil
}

func (m *Image) finishOpen() {
	if len(m.damage) > 0 {
		m.readOnly = true
		fmt.Fprintf(os.Stderr, "vdisk: warning: %s: %s; opened read-only, 'vdisk check -r all' repairs it\n",
			m.name, strings.Join(m.damage, "; "))
	}
}

func (m *Image) openDynamic(fsize int64, opts *block.OpenOptions) error {
	ft := m.footer
	tailOff := fsize - footerSize
	if ft.DataOffset > uint64(fsize) || int64(ft.DataOffset) > fsize-headerSize {
		return fmt.Errorf("vhd: footer: data offset %#x of the dynamic header is outside the file (%d bytes)", ft.DataOffset, fsize)
	}
	if ft.DataOffset%sectorSize != 0 || ft.DataOffset < footerSize {
		return fmt.Errorf("vhd: footer: data offset %#x of the dynamic header is not a sector after the footer copy", ft.DataOffset)
	}
	hb := make([]byte, headerSize)
	if err := readFull(m.f, hb, int64(ft.DataOffset)); err != nil {
		return fmt.Errorf("vhd: reading dynamic header at %#x: %w", ft.DataOffset, err)
	}
	h, cerr, err := parseHeader(hb)
	if err != nil {
		return fmt.Errorf("vhd: %w", err)
	}
	if cerr != nil {
		m.damage = append(m.damage, cerr.Error())
		m.headerDirty = true
	}
	m.hdr, m.hdrRaw = h, hb
	if m.dtype == typeDifferencing && h.BlockSize < minBitmapBlock {
		return fmt.Errorf("vhd: dynamic header: block size %d of a differencing disk is below %d, where the size of the sector bitmap is ambiguous (one sector by the specification, none by QEMU)", h.BlockSize, minBitmapBlock)
	}
	m.blockSize = int64(h.BlockSize)
	m.bmSize = bitmapSize(h.BlockSize)
	m.blockTotal = m.bmSize + m.blockSize
	need := (m.size + m.blockSize - 1) / m.blockSize
	if int64(h.MaxEntries) < need {
		return fmt.Errorf("vhd: dynamic header: max table entries %d cannot hold a disk of %d bytes with %d-byte blocks (needs %d)", h.MaxEntries, m.size, m.blockSize, need)
	}
	batBytes := int64(h.MaxEntries) * 4
	if h.TableOffset > uint64(fsize) || int64(h.TableOffset) > tailOff-batBytes {
		return fmt.Errorf("vhd: dynamic header: BAT of %d entries at offset %#x does not fit in the file (%d bytes)", h.MaxEntries, h.TableOffset, fsize)
	}
	if h.TableOffset%sectorSize != 0 {
		return fmt.Errorf("vhd: dynamic header: BAT offset %#x is not sector-aligned", h.TableOffset)
	}
	bo := int64(h.TableOffset)
	ho := int64(ft.DataOffset)
	if bo < ho+headerSize && ho < bo+batBytes || bo < footerSize {
		return fmt.Errorf("vhd: dynamic header: BAT at %#x overlaps the footer copy or the dynamic header", bo)
	}
	raw := make([]byte, batBytes)
	if err := readFull(m.f, raw, bo); err != nil {
		return fmt.Errorf("vhd: reading BAT at %#x: %w", bo, err)
	}
	meta := []region{
		{0, footerSize, "footer copy"},
		{ho, ho + headerSize, "dynamic header"},
		{bo, bo + batBytes, "BAT"},
	}
	m.bat, m.badEntry = parseBAT(raw, int(h.MaxEntries), m.blockTotal, fsize, meta)
	if len(m.badEntry) > 0 {
		m.damage = append(m.damage, firstBad(m.badEntry))
	}
	m.meta = meta
	for _, l := range h.Locators {
		if l.Code != [4]byte{} && l.DataLen > 0 && l.DataLen <= maxLocatorData && l.DataOff < uint64(fsize) {
			m.meta = append(m.meta, region{int64(l.DataOff), int64(l.DataOff) + int64(l.DataLen), "parent locator"})
		}
	}
	// The next block goes where the footer is, past every block and all
	// metadata; space a crash leaked before the footer is never reused.
	end := m.dataEnd()
	m.nextFree = max(end, (tailOff+sectorSize-1)/sectorSize*sectorSize)
	if m.footerDirty && tailOff < end {
		m.nextFree = end
	}
	if m.dtype == typeDifferencing {
		m.parentDepth = opts.Depth + 1
	}
	return nil
}

// dataEnd is the end of the last metadata structure or valid block,
// sector-aligned: where the footer belongs.
func (m *Image) dataEnd() int64 {
	var end int64
	for _, r := range m.meta {
		end = max(end, r.end)
	}
	m.batMu.RLock()
	for i, e := range m.bat {
		if e != batUnused && m.badEntry[uint32(i)] == "" {
			end = max(end, int64(e)*sectorSize+m.blockTotal)
		}
	}
	m.batMu.RUnlock()
	return (end + sectorSize - 1) / sectorSize * sectorSize
}

func firstBad(bad map[uint32]string) string {
	first := uint32(batUnused)
	for i := range bad {
		first = min(first, i)
	}
	if len(bad) == 1 {
		return bad[first]
	}
	return fmt.Sprintf("%s (and %d more bad BAT entries)", bad[first], len(bad)-1)
}

// entry returns the sector offset of block idx, or batUnused.
func (m *Image) entry(idx int64) (uint32, error) {
	m.batMu.RLock()
	defer m.batMu.RUnlock()
	if idx >= int64(len(m.bat)) {
		return batUnused, nil
	}
	e := m.bat[idx]
	if e != batUnused && m.badEntry != nil {
		if why, bad := m.badEntry[uint32(idx)]; bad {
			return 0, fmt.Errorf("vhd: %s: %s (run 'vdisk check -r all')", m.name, why)
		}
	}
	return e, nil
}

func (m *Image) Size() int64          { return m.size }
func (m *Image) ReadOnly() bool       { return m.readOnly }
func (m *Image) Backing() block.Image { return m.parent }

func (m *Image) Flush() error {
	if m.fileRO {
		return nil
	}
	return m.f.Sync()
}

func (m *Image) Close() error {
	m.closeOnce.Do(func() {
		var errs []error
		if !m.fileRO {
			errs = append(errs, m.f.Sync())
		}
		errs = append(errs, m.f.Close())
		if m.parent != nil {
			errs = append(errs, m.parent.Close())
		}
		m.closeErr = errors.Join(errs...)
	})
	return m.closeErr
}

// Info reports the size and the VHD fields: subformat, block size,
// creator, geometry, unique id and, for differencing disks, the parent.
func (m *Image) Info() (*block.Info, error) {
	ft := m.footer
	info := &block.Info{Filename: m.name, Format: "vhd", VirtualSize: m.size}
	if a, ok := m.f.(block.AllocatedSizer); ok {
		if n, err := a.AllocatedSize(); err == nil {
			info.ActualSize = n
		}
	} else {
		info.ActualSizeUnknown = true
	}
	d := block.OrderedMap{}.Add("subformat", ft.typeName())
	if m.hdr != nil {
		info.ClusterSize = m.blockSize
		d = d.Add("block-size", m.blockSize)
	}
	d = d.Add("creator", fmt.Sprintf("%s %d.%d (%s)", strings.TrimRight(printable(ft.CreatorApp[:]), " "), ft.CreatorVer>>16, ft.CreatorVer&0xffff, strings.TrimRight(printable(ft.CreatorOS[:]), " "))).
		Add("geometry", fmt.Sprintf("%d/%d/%d", ft.Geometry.Cyls, ft.Geometry.Heads, ft.Geometry.Secs)).
		Add("current-size", ft.CurSize).
		Add("size-from", map[bool]string{true: "current-size", false: "geometry"}[ft.usesCurrentSize()]).
		Add("unique-id", uuidString(ft.UniqueID))
	if m.dtype == typeDifferencing {
		d = d.Add("parent-unique-id", uuidString(m.hdr.ParentUUID)).Add("parent-name", m.hdr.ParentName)
		if m.parentFull != "" {
			info.BackingFilename = m.parentName
			info.FullBackingFilename = m.parentFull
			info.BackingFormat = "vhd"
			d = d.Add("parent-locator", m.parentFrom)
		}
	}
	if len(m.damage) > 0 {
		d = d.Add("damage", m.damage)
	}
	info.FormatSpecific = &block.FormatSpecific{Type: "vhd", Data: d}
	if m.parent != nil {
		bi, err := m.parent.Info()
		if err == nil {
			info.BackingImage = bi
		}
	}
	return info, nil
}

var _ block.Image = (*Image)(nil)
