package qcow2

import (
	"encoding/binary"
	"fmt"
)

// refcount returns the refcount of host cluster idx. img.mu held (either mode).
func (img *Image) refcount(idx int64) (uint64, error) {
	bi := idx >> img.rbBits
	if idx < 0 || bi >= int64(len(img.reftable)) {
		return 0, nil
	}
	off := int64(img.reftable[bi] & refOffsetMask)
	if off == 0 {
		return 0, nil
	}
	t, err := img.loadTable(img.rbc, off, "refcount block")
	if err != nil {
		return 0, err
	}
	return img.rcGet(t.buf, idx&(1<<img.rbBits-1)), nil
}

func (img *Image) rcGet(b []byte, i int64) uint64 {
	switch img.rcBits {
	case 0, 1, 2:
		w := uint64(1) << img.rcBits
		per := 8 / w
		return uint64(b[uint64(i)/per]>>(w*(uint64(i)%per))) & (1<<w - 1)
	case 3:
		return uint64(b[i])
	case 4:
		return uint64(binary.BigEndian.Uint16(b[i*2:]))
	case 5:
		return uint64(binary.BigEndian.Uint32(b[i*4:]))
	default:
		return binary.BigEndian.Uint64(b[i*8:])
	}
}

func (img *Image) rcPut(b []byte, i int64, v uint64) {
	switch img.rcBits {
	case 0, 1, 2:
		w := uint64(1) << img.rcBits
		per := 8 / w
		sh := w * (uint64(i) % per)
		m := byte((1<<w - 1) << sh)
		b[uint64(i)/per] = b[uint64(i)/per]&^m | byte(v<<sh)&m
	case 3:
		b[i] = byte(v)
	case 4:
		binary.BigEndian.PutUint16(b[i*2:], uint16(v))
	case 5:
		binary.BigEndian.PutUint32(b[i*4:], uint32(v))
	default:
		binary.BigEndian.PutUint64(b[i*8:], v)
	}
}

func (img *Image) rcMax() uint64 {
	if img.rcBits == 6 {
		return ^uint64(0)
	}
	return 1<<(uint64(1)<<img.rcBits) - 1
}

// setRefcount sets the refcount of cluster idx, creating the refcount block
// (and growing the refcount table) when needed. img.mu held exclusively.
func (img *Image) setRefcount(idx int64, v uint64) error {
	if v > img.rcMax() {
		return fmt.Errorf("qcow2: refcount of cluster %d would overflow %d bits", idx, 1<<img.rcBits)
	}
	if err := img.ensureBlock(idx >> img.rbBits); err != nil {
		return err
	}
	off := int64(img.reftable[idx>>img.rbBits] & refOffsetMask)
	t, err := img.loadTable(img.rbc, off, "refcount block")
	if err != nil {
		return err
	}
	img.rcPut(t.buf, idx&(1<<img.rbBits-1), v)
	t.dirty = true
	if v == 0 && idx < img.freeHint {
		img.freeHint = idx
	}
	return nil
}

func (img *Image) addRefcount(idx int64, delta int64) error {
	rc, err := img.refcount(idx)
	if err != nil {
		return err
	}
	nv := int64(rc) + delta
	if delta < 0 && rc < uint64(-delta) || nv < 0 && delta > 0 {
		return fmt.Errorf("qcow2: refcount of cluster %d would drop below zero (corrupt image)", idx)
	}
	return img.setRefcount(idx, uint64(rc)+uint64(delta))
}

// ensureBlock makes sure refcount block bi exists. A new block is put in a
// free cluster it covers itself, so it needs no other block; if the table
// must grow first, growReftable handles it.
func (img *Image) ensureBlock(bi int64) error {
	if bi < int64(len(img.reftable)) && img.reftable[bi]&refOffsetMask != 0 {
		return nil
	}
	if bi >= int64(len(img.reftable)) {
		if err := img.growReftable(bi + 1); err != nil {
			return err
		}
		if img.reftable[bi]&refOffsetMask != 0 {
			return nil
		}
	}
	// Every cluster this block covers has refcount 0, so any of them not
	// reserved by an allocation in progress can hold it.
	first := bi << img.rbBits
	last := first + 1<<img.rbBits
	c := first
	for c < last {
		if r := img.reservedAt(c); r >= 0 {
			c = r
			continue
		}
		break
	}
	if c >= last {
		// The block's whole range is being allocated: place it after,
		// in a range whose own block is created first.
		c = last
		for img.reservedAt(c) >= 0 {
			c = img.reservedAt(c)
		}
		if err := img.checkAlloc(c, 1); err != nil {
			return err
		}
		img.reserved = append(img.reserved, [2]int64{c, c + 1})
		err := img.setRefcount(c, 1)
		img.reserved = img.reserved[:len(img.reserved)-1]
		if err != nil {
			return err
		}
		t := &table{off: c << img.cbits, buf: make([]byte, img.cs), dirty: true}
		img.rbc.add(t).dirty = true
		img.reftable[bi] = uint64(c << img.cbits)
		img.tablesChanged()
		img.rtDirty = true
		return nil
	}
	if err := img.checkAlloc(c, 1); err != nil {
		return err
	}
	t := &table{off: c << img.cbits, buf: make([]byte, img.cs), dirty: true}
	img.rcPut(t.buf, c-first, 1)
	img.rbc.add(t).dirty = true
	img.reftable[bi] = uint64(c << img.cbits)
	img.tablesChanged()
	img.rtDirty = true
	return nil
}

// reservedAt returns the end of the reserved range containing c, or -1.
func (img *Image) reservedAt(c int64) int64 {
	for _, r := range img.reserved {
		if c >= r[0] && c < r[1] {
			return r[1]
		}
	}
	return -1
}

// growReftable enlarges the refcount table to at least n entries, moving it
// to new clusters. The new table is written by the next flush, before the
// header points to it; the old table is freed after that.
func (img *Image) growReftable(n int64) error {
	per := img.cs / 8
	want := max(n+n/2, int64(len(img.reftable))*2)
	want = (want + per - 1) / per * per
	if want*8 > maxReftableBytes {
		want = maxReftableBytes / 8
		if n > want {
			return fmt.Errorf("qcow2: image too large: refcount table would exceed %d bytes", maxReftableBytes)
		}
	}
	oldOff := int64(img.h.reftableOffset)
	oldLen := int64(len(img.reftable)) * 8
	nt := make([]uint64, want)
	copy(nt, img.reftable)
	img.reftable = nt
	img.tablesChanged()
	clusters := want * 8 / img.cs
	off, err := img.allocClusters(clusters)
	if err != nil {
		return err
	}
	img.h.reftableOffset = uint64(off)
	img.h.reftableClusters = uint32(clusters)
	img.rtDirty = true
	img.rtMoved = true
	img.free(oldOff, oldLen)
	return nil
}

// free queues the refcount decrements of the clusters under [off, off+n),
// applied by the next flush once no metadata on disk refers to them.
func (img *Image) free(off, n int64) {
	if off <= 0 || n <= 0 {
		return
	}
	for c := off >> img.cbits; c <= (off+n-1)>>img.cbits; c++ {
		img.pending[c]++
		// Counted when its last reference goes; an estimate (refcounts
		// may change before the flush) that only decides whether a
		// flush to reuse freed space is worth it.
		if rc, err := img.refcount(c); err == nil && uint64(img.pending[c]) == rc {
			img.pendingFrees++
		}
	}
}

// freeEntry queues freeing whatever host clusters an L2 entry references.
func (img *Image) freeEntry(e l2e) {
	if img.df != nil {
		return // data file clusters are not refcounted
	}
	if e.compressed() {
		_, _, rs, rl := img.compRange(e)
		img.free(rs, rl)
		return
	}
	if h := e.host(); h != 0 {
		img.free(h, img.cs)
	}
}
