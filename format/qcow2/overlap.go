package qcow2

import (
	"fmt"
	"syscall"
)

// Kinds of metadata for the overlap check, as a mask so that a table being
// written can exclude its own kind (a refcount block is one of the refcount
// blocks).
const (
	olHeader = 1 << iota
	olL1
	olL2
	olReftable
	olRefblock
	olSnapTable
	olSnapL1
	olBitmapDir
	olAll = olHeader | olL1 | olL2 | olReftable | olRefblock | olSnapTable | olSnapL1 | olBitmapDir
)

// metaOverlap names the metadata of the kinds in mask that host range
// [off, off+n) overlaps, or returns "". Wrong refcounts or a corrupt table
// can make the driver write a new cluster, a refcount block or an L2 table
// over live metadata; this is the last line of defence against destroying
// the image, as QEMU's metadata overlap check. img.mu held.
func (img *Image) metaOverlap(off, n int64, mask int) string {
	if n <= 0 {
		return ""
	}
	in := func(s, l int64) bool { return l > 0 && off < s+l && s < off+n }
	h := img.h
	switch {
	case mask&olHeader != 0 && in(0, img.cs):
		return "qcow2_header"
	case mask&olL1 != 0 && in(int64(h.l1Offset), int64(len(img.l1))*8):
		return "active L1 table"
	case mask&olReftable != 0 && in(int64(h.reftableOffset), int64(h.reftableClusters)<<img.cbits):
		return "refcount table"
	case mask&olSnapTable != 0 && h.nbSnapshots > 0 && in(int64(h.snapshotsOffset), img.oldSnapshotTableLen):
		// The table on disk, not the in-memory list, which changes
		// before its new table is allocated.
		return "snapshot table"
	case mask&olBitmapDir != 0 && in(img.bitmapDir[0], img.bitmapDir[1]):
		return "bitmap directory"
	}
	if mask&olSnapL1 != 0 {
		for _, s := range img.snapshots {
			if in(int64(s.l1Offset), int64(s.l1Size)*8) {
				return "inactive L1 table"
			}
		}
	}
	if mask&(olL2|olRefblock) == 0 {
		return ""
	}
	idx := img.tableIndex()
	hit := func(k int) string {
		switch {
		case k&olL2 != 0 && mask&olL2 != 0:
			return "active L2 table"
		case k&olRefblock != 0 && mask&olRefblock != 0:
			return "refcount block"
		}
		return ""
	}
	first, last := off>>img.cbits, (off+n-1)>>img.cbits
	if last-first >= int64(len(idx.kind)) {
		for c, k := range idx.kind {
			if c >= first && c <= last && hit(k) != "" {
				return hit(k)
			}
		}
		return ""
	}
	for c := first; c <= last; c++ {
		if what := hit(idx.kind[c]); what != "" {
			return what
		}
	}
	return ""
}

// tableIndex maps the host clusters that the L1 table and the refcount
// table point to onto their kind, so that the check every in-place write
// makes is a lookup rather than a scan of both tables (thousands of
// entries on a large image). img.mu held, shared or exclusive: the tables
// only change under the exclusive lock, which also drops the index.
type tableIndex struct {
	kind map[int64]int
}

func (img *Image) tableIndex() *tableIndex {
	if idx := img.tables.Load(); idx != nil {
		return idx
	}
	idx := &tableIndex{kind: map[int64]int{}}
	// A table at an unaligned offset (a corrupt entry) covers two clusters.
	add := func(o int64, k int) {
		idx.kind[o>>img.cbits] |= k
		idx.kind[(o+img.cs-1)>>img.cbits] |= k
	}
	for _, e := range img.l1 {
		if o := int64(e & offsetMask); o != 0 {
			add(o, olL2)
		}
	}
	for _, e := range img.reftable {
		if o := int64(e & refOffsetMask); o != 0 {
			add(o, olRefblock)
		}
	}
	img.tables.Store(idx)
	return idx
}

// tablesChanged drops the index after a change to the L1 or refcount
// table. img.mu held exclusively.
func (img *Image) tablesChanged() { img.tables.Store(nil) }

// checkAlloc refuses clusters [c, c+n) that the refcounts say are free but
// that hold metadata. Only clusters inside the file can hold any, which
// keeps the scan off the common path of appending at the end.
func (img *Image) checkAlloc(c, n int64) error {
	fsize, err := img.f.Size()
	if err != nil {
		return err
	}
	if c<<img.cbits >= fsize {
		return nil
	}
	if what := img.metaOverlap(c<<img.cbits, n<<img.cbits, olAll); what != "" {
		return img.markCorrupt(what, c<<img.cbits, n<<img.cbits)
	}
	return nil
}

// checkDirtyTables verifies, before a write-back, that no dirty refcount
// block or L2 table sits on other metadata. The table sets are matched in
// one pass over the L1 and refcount tables rather than per table.
func (img *Image) checkDirtyTables(rbd, l2d []*table) error {
	if len(rbd) == 0 && len(l2d) == 0 {
		return nil
	}
	fixed := olAll &^ (olL2 | olRefblock)
	rbSet := make(map[int64]bool, len(rbd))
	for _, t := range rbd {
		if what := img.metaOverlap(t.off, img.cs, fixed); what != "" {
			return img.markCorrupt(what, t.off, img.cs)
		}
		rbSet[t.off] = true
	}
	l2Set := make(map[int64]bool, len(l2d))
	for _, t := range l2d {
		if what := img.metaOverlap(t.off, img.cs, fixed); what != "" {
			return img.markCorrupt(what, t.off, img.cs)
		}
		l2Set[t.off] = true
	}
	if len(rbSet) > 0 {
		for _, e := range img.l1 {
			if o := int64(e & offsetMask); rbSet[o] {
				return img.markCorrupt("active L2 table", o, img.cs)
			}
		}
	}
	if len(l2Set) > 0 {
		for _, e := range img.reftable {
			if o := int64(e & refOffsetMask); l2Set[o] {
				return img.markCorrupt("refcount block", o, img.cs)
			}
		}
	}
	return nil
}

// markCorrupt sets the corrupt bit, as QEMU does on an overlap, so that the
// image is not opened read/write again before it is repaired, and fails
// every later write of this open. The data already on disk is left alone.
func (img *Image) markCorrupt(what string, off, n int64) error {
	err := fmt.Errorf("qcow2: preventing invalid write on metadata at %#x+%#x (overlaps with %s); image marked corrupt, repair it with 'vdisk check -r all': %w",
		off, n, what, syscall.EIO)
	if img.corrupt {
		return err
	}
	img.corrupt = true
	if img.h.version >= 3 {
		// Only the feature field is patched: the in-memory header may point
		// to tables that are not on disk yet.
		var b [8]byte
		if rerr := readFull(img.f, b[:], 72); rerr != nil {
			return fmt.Errorf("%w (and setting the corrupt bit failed: %v)", err, rerr)
		}
		putBE64(b[:], be64(b[:])|incCorrupt)
		if _, werr := img.f.WriteAt(b[:], 72); werr != nil {
			return fmt.Errorf("%w (and setting the corrupt bit failed: %v)", err, werr)
		}
		if serr := img.f.Sync(); serr != nil {
			return fmt.Errorf("%w (and syncing the corrupt bit failed: %v)", err, serr)
		}
		img.h.incompatible |= incCorrupt
	}
	return err
}

// errCorrupted is returned by writes after markCorrupt.
func (img *Image) errCorrupted() error {
	return fmt.Errorf("qcow2: image was marked corrupt by an earlier invalid write; writes refused: %w", syscall.EIO)
}
