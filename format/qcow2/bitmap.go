package qcow2

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Persistent dirty bitmaps (the bitmaps header extension) are not kept
// up to date by this driver. A writable open does what QEMU does with a
// bitmap it cannot maintain: it marks every bitmap in use (inconsistent)
// and keeps the extension valid, so that QEMU still counts the bitmaps'
// clusters as referenced and lets the user remove the bitmaps, instead of
// the bitmap clusters turning into leaks.

// Limits of the bitmaps extension, as QEMU enforces them.
const (
	bmMaxBitmaps     = 65535
	bmMaxDirSize     = 1024 * bmMaxBitmaps
	bmMaxTableSize   = 0x8000000
	bmMaxPhysSize    = 0x20000000
	bmMaxNameSize    = 1023
	bmMinGranularity = 9
	bmMaxGranularity = 31
	bmFlagInUse      = 1 << 0
	bmFlagAuto       = 1 << 1
	bmReservedFlags  = ^uint32(bmFlagInUse | bmFlagAuto)
	bmTypeDirty      = 1
	bmEntryHeader    = 24
)

type bitmapEntry struct {
	pos        int // offset of the entry in the directory
	tableOff   int64
	tableSize  int64
	flags      uint32
	gbits      uint
	name       string
	extraBytes uint32
}

type bitmapDir struct {
	off, size int64
	raw       []byte
	entries   []bitmapEntry
}

// bitmapExt returns the bitmaps extension's data, or nil if the image has
// none or the autoclear bit says it is stale.
func (img *Image) bitmapExt() []byte {
	if img.h.version < 3 || img.h.autoclear&autoclearBitmaps == 0 {
		return nil
	}
	if data, ok := img.h.ext(extBitmaps); ok {
		if data == nil {
			return []byte{} // present but empty: a malformed extension
		}
		return data
	}
	return nil
}

// readBitmapDir reads and validates the bitmap directory with QEMU's
// rules (qcow2-bitmap.c refuses the open on any of these). It returns
// nil, nil when the image has no valid-flagged bitmaps extension.
func (img *Image) readBitmapDir() (*bitmapDir, error) {
	ext := img.bitmapExt()
	if ext == nil {
		return nil, nil
	}
	if len(ext) != 24 {
		return nil, fmt.Errorf("bitmaps extension has length %d, not 24", len(ext))
	}
	nb, reserved := be32(ext), be32(ext[4:])
	dirSize, dirOff := be64(ext[8:]), be64(ext[16:])
	switch {
	case reserved != 0:
		return nil, errors.New("bitmaps extension's reserved field is not zero")
	case nb == 0:
		return nil, errors.New("bitmaps extension with zero bitmaps")
	case nb > bmMaxBitmaps:
		return nil, fmt.Errorf("%d bitmaps, more than %d", nb, bmMaxBitmaps)
	case dirOff == 0 || dirOff&uint64(img.cs-1) != 0:
		return nil, fmt.Errorf("bitmap directory offset %#x is not cluster aligned", dirOff)
	case dirSize < bmEntryHeader || dirSize > bmMaxDirSize:
		return nil, fmt.Errorf("bitmap directory size %d is invalid", dirSize)
	}
	// The directory must be in the file before its size sets a buffer.
	if fsize, err := img.f.Size(); err != nil {
		return nil, err
	} else if dirOff > uint64(fsize) || dirSize > uint64(fsize)-dirOff {
		return nil, fmt.Errorf("bitmap directory at %#x (%d bytes) is beyond the end of the file", dirOff, dirSize)
	}
	d := &bitmapDir{off: int64(dirOff), size: int64(dirSize), raw: make([]byte, dirSize)}
	if err := readFull(img.f, d.raw, d.off); err != nil {
		return nil, fmt.Errorf("bitmap directory at %#x: %w", dirOff, err)
	}
	names := map[string]bool{}
	p := 0
	for i := uint32(0); i < nb; i++ {
		if p+bmEntryHeader > len(d.raw) {
			return nil, fmt.Errorf("bitmap %d lies beyond the bitmap directory", i)
		}
		e := d.raw[p:]
		be := bitmapEntry{
			pos:        p,
			tableOff:   int64(be64(e)),
			tableSize:  int64(be32(e[8:])),
			flags:      be32(e[12:]),
			gbits:      uint(e[17]),
			extraBytes: be32(e[20:]),
		}
		nameSize := int(be16(e[18:]))
		n := (bmEntryHeader + int64(be.extraBytes) + int64(nameSize) + 7) &^ 7
		if n > int64(len(e)) {
			return nil, fmt.Errorf("bitmap %d lies beyond the bitmap directory", i)
		}
		be.name = string(e[bmEntryHeader+int(be.extraBytes) : bmEntryHeader+int(be.extraBytes)+nameSize])
		switch {
		case be.extraBytes != 0:
			return nil, fmt.Errorf("bitmap %q has extra data, which is not supported", be.name)
		case be.tableOff == 0 || be.tableOff&(img.cs-1) != 0:
			return nil, fmt.Errorf("bitmap %q: table offset %#x is not cluster aligned", be.name, be.tableOff)
		case be.tableSize == 0 || be.tableSize > bmMaxTableSize || be.tableSize*img.cs > bmMaxPhysSize:
			return nil, fmt.Errorf("bitmap %q: table size %d is invalid", be.name, be.tableSize)
		case be.gbits < bmMinGranularity || be.gbits > bmMaxGranularity:
			return nil, fmt.Errorf("bitmap %q: granularity bits %d out of range", be.name, be.gbits)
		case be.flags&bmReservedFlags != 0:
			return nil, fmt.Errorf("bitmap %q: reserved flags %#x set", be.name, be.flags&bmReservedFlags)
		case nameSize == 0 || nameSize > bmMaxNameSize:
			return nil, fmt.Errorf("bitmap %d: name size %d is invalid", i, nameSize)
		case e[16] != bmTypeDirty:
			return nil, fmt.Errorf("bitmap %q: type %d is not a dirty tracking bitmap", be.name, e[16])
		case names[be.name]:
			return nil, fmt.Errorf("bitmap %q appears twice", be.name)
		}
		// A consistent bitmap must cover the whole disk.
		if be.flags&bmFlagInUse == 0 && uint64(img.Size()) > (uint64(be.tableSize*img.cs)*8)<<be.gbits {
			return nil, fmt.Errorf("bitmap %q does not cover the virtual disk", be.name)
		}
		names[be.name] = true
		d.entries = append(d.entries, be)
		p += int(n)
	}
	if p != len(d.raw) {
		return nil, fmt.Errorf("bitmap directory size %d does not match its %d bitmaps (%d bytes)", dirSize, nb, p)
	}
	return d, nil
}

// keepBitmaps runs at a writable open (mu held), before anything else
// changes: it reports whether the bitmaps autoclear bit may stay set,
// after marking every bitmap in use on disk if markInUse is set. A
// malformed extension is refused, as QEMU refuses to open such an image;
// a check open (which repairs) drops it instead, leaving its clusters as
// leaks.
func (img *Image) keepBitmaps(markInUse bool) (bool, error) {
	d, err := img.readBitmapDir()
	if err != nil {
		if img.checkOnly {
			return false, nil
		}
		return false, fmt.Errorf("qcow2: persistent bitmaps: %v; cannot open read/write (open read-only, or repair with 'vdisk check -r all')", err)
	}
	if d == nil {
		return false, nil
	}
	img.bitmapDir = [2]int64{d.off, d.size}
	if !markInUse {
		return true, nil
	}
	changed := false
	for _, e := range d.entries {
		if e.flags&bmFlagInUse == 0 {
			putBE32(d.raw[e.pos+12:], e.flags|bmFlagInUse)
			changed = true
		}
	}
	if !changed {
		return true, nil
	}
	// QEMU's order for rewriting the directory in place: with the
	// autoclear bit off during the write, a crash leaves the bitmaps
	// ignored (their clusters leaked), never a torn directory trusted.
	img.h.autoclear &^= autoclearBitmaps
	if err := img.writeHeaderSynced(); err != nil {
		return false, err
	}
	if _, err := img.f.WriteAt(d.raw, d.off); err != nil {
		return false, fmt.Errorf("qcow2: writing bitmap directory at %#x: %w", d.off, err)
	}
	if err := img.sync(); err != nil {
		return false, err
	}
	img.h.autoclear |= autoclearBitmaps
	img.headerDirty = true
	return true, nil
}

// hasBitmaps reports whether the image carries persistent bitmaps that
// QEMU considers part of the image.
func (img *Image) hasBitmaps() bool {
	ext := img.bitmapExt()
	return len(ext) >= 4 && be32(ext) != 0
}

func putBE32(b []byte, v uint32) { binary.BigEndian.PutUint32(b, v) }
