package vhd

import (
	"crypto/rand"
	"errors"
	"fmt"
	"math/bits"
	"net/url"
	"path/filepath"
	"time"

	"vdisk/block"
)

// creatorApp marks images vdisk made. QEMU sizes images of unknown
// creators by geometry, so vdisk writes a geometry that says the same
// size, or the maximal geometry when the size must be taken from the footer.
var creatorApp = [4]byte{'v', 'd', 's', 'k'}

func newUUID() ([16]byte, error) {
	var u [16]byte
	if _, err := rand.Read(u[:]); err != nil {
		return u, err
	}
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	return u, nil
}

func now() uint32 { return uint32(time.Now().Unix() - timestampEpoch) }

// flatPlan is a checked request for a fixed or dynamic disk.
type flatPlan struct {
	size int64
	geo  Geometry
	sub  string
	bs   uint32 // dynamic disks
}

// subformat is the subformat option, checked.
func subformat(opts block.Options) (string, error) {
	sub := opts.String("subformat", "dynamic")
	if sub != "dynamic" && sub != "fixed" {
		return "", fmt.Errorf("vhd: invalid subformat '%s' (allowed: dynamic, fixed)", sub)
	}
	return sub, nil
}

func planFlat(opts block.Options) (*flatPlan, error) {
	sub, err := subformat(opts)
	if err != nil {
		return nil, err
	}
	size := opts.Size("size", -1)
	if size < 0 {
		return nil, errors.New("vhd: image size must be specified")
	}
	if size/sectorSize > maxSectors {
		// Checked before rounding too, which could overflow.
		return nil, errors.New("vhd: disk size is too large, max size is 2040 GiB")
	}
	size = (size + sectorSize - 1) / sectorSize * sectorSize
	geo, size := roundedGeometry(size, opts.Bool("force_size", false))
	if size/sectorSize > maxSectors {
		return nil, errors.New("vhd: disk size is too large, max size is 2040 GiB")
	}
	p := &flatPlan{size: size, geo: geo, sub: sub}
	if sub == "dynamic" {
		bs, err := blockSizeOpt(opts)
		if err != nil {
			return nil, err
		}
		p.bs = bs
	}
	return p, nil
}

func checkCreate(name string, opts block.Options) (int64, error) {
	if backing := opts.String("backing_file", ""); backing != "" {
		d, err := planDifferencing(name, opts, backing)
		if err != nil {
			return 0, err
		}
		d.parent.Close()
		return 0, nil
	}
	p, err := planFlat(opts)
	if err != nil {
		return 0, err
	}
	if p.sub == "fixed" {
		return p.size + footerSize, nil
	}
	return 0, nil
}

func create(f block.File, opts block.Options) error {
	if backing := opts.String("backing_file", ""); backing != "" {
		return createDifferencing(f, opts, backing)
	}
	p, err := planFlat(opts)
	if err != nil {
		return err
	}
	ft, err := newFooter(p.size, p.geo)
	if err != nil {
		return err
	}
	if p.sub == "fixed" {
		ft.DiskType = typeFixed
		ft.DataOffset = noOffset
		if err := f.Truncate(p.size + footerSize); err != nil {
			return fmt.Errorf("vhd: %w", err)
		}
		if _, err := f.WriteAt(ft.marshal(), p.size); err != nil {
			return fmt.Errorf("vhd: writing footer: %w", err)
		}
		return nil
	}
	ft.DiskType = typeDynamic
	return writeDynamic(f, ft, &Header{BlockSize: p.bs}, nil)
}

// defaultBlockSize is the block size of new dynamic and differencing
// disks, as with qemu-img and Hyper-V.
const defaultBlockSize = 2 << 20

func blockSizeOpt(opts block.Options) (uint32, error) {
	bs := opts.Size("block_size", defaultBlockSize)
	if bs < minBitmapBlock || bs > maxBlockSize || bits.OnesCount64(uint64(bs)) != 1 {
		return 0, fmt.Errorf("vhd: block_size %d is not a power of two between %d and %d", bs, minBitmapBlock, maxBlockSize)
	}
	return uint32(bs), nil
}

func newFooter(size int64, geo Geometry) (*Footer, error) {
	id, err := newUUID()
	if err != nil {
		return nil, fmt.Errorf("vhd: unique id: %w", err)
	}
	return &Footer{
		Features:   2,
		Version:    0x00010000,
		Timestamp:  now(),
		CreatorApp: creatorApp,
		CreatorVer: 0x00010000,
		CreatorOS:  [4]byte{'W', 'i', '2', 'k'},
		OrigSize:   uint64(size),
		CurSize:    uint64(size),
		Geometry:   geo,
		UniqueID:   id,
	}, nil
}

// diffPlan is a checked request for a differencing disk.
type diffPlan struct {
	parent *Image // open; the caller closes it
	full   string // the parent's name, resolved against the child's
	bs     uint32
}

// planDifferencing opens and checks the parent of a differencing disk to
// be made at name.
func planDifferencing(name string, opts block.Options, backing string) (*diffPlan, error) {
	if sub, err := subformat(opts); err != nil {
		return nil, err
	} else if sub == "fixed" {
		return nil, errors.New("vhd: a differencing disk (backing_file) cannot be fixed")
	}
	if bf := opts.String("backing_fmt", ""); bf != "" && bf != "vhd" && bf != "vpc" {
		return nil, fmt.Errorf("vhd: the parent of a differencing disk must be a VHD, not '%s'", bf)
	}
	bs, err := blockSizeOpt(opts)
	if err != nil {
		return nil, err
	}
	full := block.ResolveBacking(name, backing)
	// Like qemu-img create (bdrv_img_create), read the parent without
	// its locks: it only needs to be looked at, and it may well be open
	// for writing elsewhere while a child is made for later use.
	pimg, err := block.Open(full, block.OpenOptions{Format: "vhd", ReadOnly: true, ForceShare: true})
	if err != nil {
		return nil, fmt.Errorf("vhd: opening parent: %w", err)
	}
	p, ok := pimg.(*Image)
	if !ok {
		pimg.Close()
		return nil, fmt.Errorf("vhd: parent %s is not a VHD", full)
	}
	if s := opts.Size("size", -1); s >= 0 && s != p.Size() {
		pimg.Close()
		return nil, fmt.Errorf("vhd: a differencing disk has its parent's size (%d bytes), not %d", p.Size(), s)
	}
	if !opts.Has("block_size") && p.hdr != nil && p.hdr.BlockSize >= minBitmapBlock {
		// Without a block_size, the child takes its parent's, unless
		// that is too small for a differencing disk (a parent made by
		// another tool): then it gets the default.
		bs = p.hdr.BlockSize
	}
	return &diffPlan{parent: p, full: full, bs: bs}, nil
}

// locatorData is one parent locator to write.
type locatorData struct {
	code string
	data []byte
}

// writeDynamic lays out a dynamic or differencing disk as QEMU does: footer
// copy, header at 512, BAT at 1536, then any parent locator data, then the
// footer.
func writeDynamic(f block.File, ft *Footer, h *Header, locs []locatorData) error {
	size := int64(ft.CurSize)
	if ft.Geometry.Sectors() != maxGeometry {
		size = ft.Geometry.Sectors() * sectorSize
	}
	entries := (size + int64(h.BlockSize) - 1) / int64(h.BlockSize)
	ft.DataOffset = footerSize
	h.DataOffset = noOffset
	h.TableOffset = 3 * sectorSize
	h.Version = 0x00010000
	h.MaxEntries = uint32(entries)
	batBytes := (entries*4 + sectorSize - 1) / sectorSize * sectorSize
	pos := int64(h.TableOffset) + batBytes
	for i, l := range locs {
		space := (int64(len(l.data)) + sectorSize - 1) / sectorSize * sectorSize
		copy(h.Locators[i].Code[:], l.code)
		// Hyper-V stores the reserved space in bytes, despite the
		// specification's "sectors"; readers use only the length.
		h.Locators[i].DataSpace = uint32(space)
		h.Locators[i].DataLen = uint32(len(l.data))
		h.Locators[i].DataOff = uint64(pos)
		if _, err := f.WriteAt(l.data, pos); err != nil {
			return fmt.Errorf("vhd: parent locator: %w", err)
		}
		pos += space
	}
	fb := ft.marshal()
	if _, err := f.WriteAt(fb, pos); err != nil {
		return fmt.Errorf("vhd: writing footer: %w", err)
	}
	bat := make([]byte, batBytes)
	for i := range bat {
		bat[i] = 0xFF
	}
	if _, err := f.WriteAt(bat, int64(h.TableOffset)); err != nil {
		return fmt.Errorf("vhd: writing BAT: %w", err)
	}
	if _, err := f.WriteAt(h.marshal(), footerSize); err != nil {
		return fmt.Errorf("vhd: writing dynamic header: %w", err)
	}
	if _, err := f.WriteAt(fb, 0); err != nil {
		return fmt.Errorf("vhd: writing footer copy: %w", err)
	}
	return nil
}

// createDifferencing makes a child of a VHD parent. The child takes the
// parent's size (and a geometry that yields it) and records the parent's
// unique id and time stamp, its name, and relative (W2ru), absolute (W2ku)
// and file URL (MacX) locators.
func createDifferencing(f block.File, opts block.Options, backing string) error {
	d, err := planDifferencing(f.Name(), opts, backing)
	if err != nil {
		return err
	}
	p, full := d.parent, d.full
	defer p.Close()
	size := p.Size()
	geo := p.footer.Geometry
	if p.footer.usesCurrentSize() {
		geo = Geometry{maxCyls, maxHeads, maxSecs}
	}
	ft, err := newFooter(size, geo)
	if err != nil {
		return err
	}
	ft.DiskType = typeDifferencing
	abs, err := filepath.Abs(full)
	if err != nil {
		return fmt.Errorf("vhd: %w", err)
	}
	rel := backing
	if filepath.IsAbs(rel) {
		if r, err := filepath.Rel(filepath.Dir(f.Name()), abs); err == nil {
			rel = r
		}
	}
	h := &Header{
		BlockSize:       d.bs,
		ParentUUID:      p.footer.UniqueID,
		ParentTimestamp: p.footer.Timestamp,
		ParentName:      toWindowsPath(filepath.Base(abs)),
	}
	locs := []locatorData{
		{platW2ru, encodeUTF16(toWindowsPath(rel), leUTF16)},
		{platW2ku, encodeUTF16(toWindowsPath(abs), leUTF16)},
		{platMacX, []byte((&url.URL{Scheme: "file", Path: abs}).String())},
	}
	return writeDynamic(f, ft, h, locs)
}
