package qcow2

import (
	"encoding/binary"
	"fmt"
)

// Cluster kinds of an L2 entry (or of a subcluster with extended L2).
type kind uint8

const (
	kUnalloc    kind = iota // read from the backing file, or zeros
	kZero                   // reads as zeros (maybe with a preallocated host cluster)
	kData                   // plain data at a host offset
	kCompressed             // compressed data
)

// l2e is one L2 entry: the 64-bit descriptor and, with extended L2, the
// subcluster bitmap (low 32 bits allocated, high 32 bits zero).
type l2e struct {
	d, bm uint64
}

func (e l2e) host() int64      { return int64(e.d & offsetMask) }
func (e l2e) copied() bool     { return e.d&flagCopied != 0 }
func (e l2e) compressed() bool { return e.d&flagCompressed != 0 }

// kind classifies a standard (non-extended) entry.
func (img *Image) kind(e l2e) kind {
	switch {
	case e.compressed():
		return kCompressed
	case !img.ext && e.d&flagZero != 0 && img.h.version >= 3:
		return kZero
	case e.host() != 0:
		return kData
	}
	return kUnalloc
}

// subKind classifies subcluster sc of an extended entry.
func (img *Image) subKind(e l2e, sc uint) kind {
	if e.compressed() {
		return kCompressed
	}
	switch {
	case e.bm>>(32+sc)&1 != 0:
		return kZero
	case e.bm>>sc&1 != 0 && e.host() != 0:
		return kData
	}
	return kUnalloc
}

// compRange returns where compressed data sits: start offset, length of the
// stream to decompress, and the sector-aligned range it occupies (what its
// refcounts cover).
func (img *Image) compRange(e l2e) (off, n, rstart, rlen int64) {
	off = int64(e.d & img.compOffMask)
	sectors := int64((e.d>>img.csizeShift)&img.csizeMask) + 1
	rstart = off &^ 511
	rlen = sectors * 512
	n = rstart + rlen - off
	return
}

func (img *Image) l2Index(vc int64) (l1i int64, idx int) {
	return vc >> img.l2Bits, int(vc & (1<<img.l2Bits - 1))
}

func (img *Image) getEntry(t *table, idx int) l2e {
	o := idx * img.l2EntSize
	e := l2e{d: binary.BigEndian.Uint64(t.buf[o:])}
	if img.df != nil {
		e.d = img.fromDisk(e.d)
	}
	if img.ext {
		e.bm = binary.BigEndian.Uint64(t.buf[o+8:])
	}
	return e
}

func (img *Image) setEntry(t *table, idx int, e l2e) {
	o := idx * img.l2EntSize
	d := e.d
	if img.df != nil {
		d = img.toDisk(d)
	}
	binary.BigEndian.PutUint64(t.buf[o:], d)
	if img.ext {
		binary.BigEndian.PutUint64(t.buf[o+8:], e.bm)
	}
	t.dirty = true
}

// loadTable returns the cached metadata cluster at off, reading it on a
// miss. Safe with img.mu held shared: concurrent loaders race benignly.
func (img *Image) loadTable(c *cache, off int64, what string) (*table, error) {
	if t := c.get(off); t != nil {
		return t, nil
	}
	if off <= 0 || off&(img.cs-1) != 0 {
		return nil, fmt.Errorf("qcow2: %s offset %#x is invalid (corrupt image)", what, off)
	}
	buf := make([]byte, img.cs)
	if err := readFull(img.f, buf, off); err != nil {
		return nil, fmt.Errorf("qcow2: %s at %#x: %w", what, off, err)
	}
	return c.add(&table{off: off, buf: buf}), nil
}

// lookup returns the L2 entry of virtual cluster vc (zero if unmapped).
func (img *Image) lookup(vc int64) (l2e, error) {
	l1i, idx := img.l2Index(vc)
	if l1i >= int64(len(img.l1)) {
		return l2e{}, nil
	}
	off := int64(img.l1[l1i] & offsetMask)
	if off == 0 {
		return l2e{}, nil
	}
	t, err := img.loadTable(img.l2c, off, "L2 table")
	if err != nil {
		return l2e{}, err
	}
	e := img.getEntry(t, idx)
	if e.compressed() {
		if img.ext && e.bm != 0 {
			return l2e{}, fmt.Errorf("qcow2: compressed cluster with subcluster bitmap at guest offset %#x (corrupt image)", vc<<img.cbits)
		}
		// With clusters of 8 KiB or less the offset field reaches past
		// what any host offset may be.
		if off, n, _, _ := img.compRange(e); off+n > maxHostOffset {
			return l2e{}, fmt.Errorf("qcow2: invalid compressed cluster descriptor %#x for guest offset %#x: host offset beyond %#x (corrupt image)", e.d, vc<<img.cbits, maxHostOffset)
		}
	} else if e.d&^flagCopied&^offsetMask&^flagZero != 0 || e.host()&(img.cs-1) != 0 {
		return l2e{}, fmt.Errorf("qcow2: invalid L2 entry %#x for guest offset %#x (corrupt image)", e.d, vc<<img.cbits)
	}
	if err := img.checkDataEntry(e, vc); err != nil {
		return l2e{}, err
	}
	if img.ext && e.host() == 0 && !e.compressed() && uint32(e.bm) != 0 {
		return l2e{}, fmt.Errorf("qcow2: allocated subclusters without a host cluster at guest offset %#x (corrupt image)", vc<<img.cbits)
	}
	return e, nil
}

// l2ForWrite returns the L2 table covering vc, owned by the active L1
// (allocated, or copied from a table shared with a snapshot). img.mu held
// exclusively.
func (img *Image) l2ForWrite(vc int64) (*table, int, error) {
	l1i, idx := img.l2Index(vc)
	if l1i >= int64(len(img.l1)) {
		return nil, 0, fmt.Errorf("qcow2: guest cluster %d beyond the L1 table", vc)
	}
	ent := img.l1[l1i]
	off := int64(ent & offsetMask)
	if off != 0 {
		// Another L1 entry naming the same table is a refcount matter for
		// check; anything else there would be overwritten.
		if what := img.metaOverlap(off, img.cs, olAll&^olL2); what != "" {
			return nil, 0, img.markCorrupt(what, off, img.cs)
		}
	}
	if off != 0 && ent&flagCopied != 0 {
		t, err := img.loadTable(img.l2c, off, "L2 table")
		return t, idx, err
	}
	var old *table
	if off != 0 {
		t, err := img.loadTable(img.l2c, off, "L2 table")
		if err != nil {
			return nil, 0, err
		}
		old = t
	}
	noff, err := img.allocClusters(1)
	if err != nil {
		return nil, 0, err
	}
	t := &table{off: noff, buf: make([]byte, img.cs), dirty: true}
	if old != nil {
		copy(t.buf, old.buf)
		// Entries of the copy are shared with the snapshot's table, so none
		// of them may keep COPIED.
		for i := 0; i < 1<<img.l2Bits; i++ {
			e := img.getEntry(t, i)
			e.d &^= flagCopied
			img.setEntry(t, i, e)
		}
		img.free(off, img.cs)
	}
	t = img.l2c.add(t)
	t.dirty = true
	img.l1[l1i] = uint64(noff) | flagCopied
	img.tablesChanged()
	img.l1Dirty = true
	return t, idx, nil
}
