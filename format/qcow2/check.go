package qcow2

import (
	"fmt"
	"strings"

	"vdisk/block"
)

// maxCheckClusters bounds the reference count array of a check.
const maxCheckClusters = 1 << 28

// Check verifies refcounts and table structure with qemu-img check's
// categories, repairing what mode allows. As QEMU checks a quiesced image,
// a writable image is checked with the metadata lock held exclusively,
// once no allocating write is in flight and dirty metadata and queued
// frees are written back: the result is exact while other goroutines
// write, with neither their allocations nor their frees taken for leaks,
// nor tables still in the cache read stale from the file.
func (img *Image) Check(mode block.RepairMode) (*block.CheckResult, error) {
	if img.ro {
		if mode != block.RepairNone {
			return nil, block.ErrReadOnly
		}
		img.mu.RLock()
		defer img.mu.RUnlock()
		return img.checkLocked(mode, false)
	}
	img.lockMeta()
	defer img.mu.Unlock()
	if img.closed {
		return nil, block.ErrClosed
	}
	if mode == block.RepairNone && img.corrupt {
		// Marked corrupt by an overlap this session: nothing is written
		// back (see Close), so the check judges what is on disk.
		return img.checkLocked(mode, false)
	}
	if err := img.flushLocked(false); err != nil {
		return nil, err
	}
	if mode != block.RepairNone && img.checkOnly && img.h.incompatible&incDirty != 0 && mode&block.RepairErrors != 0 {
		// The rebuild a writable open of a dirty image does, left
		// to the check that was asked for it.
		res, err := img.checkLocked(mode, true)
		if err != nil {
			return nil, err
		}
		if err := img.flushLocked(true); err != nil {
			return nil, err
		}
		img.h.incompatible &^= incDirty
		if err := img.writeHeaderSynced(); err != nil {
			return nil, err
		}
		return res, nil
	}
	return img.checkLocked(mode, false)
}

// Reserved bits of table entries, as QEMU checks them.
const (
	l1Reserved = uint64(0x7f000000000001ff)
	l2Reserved = uint64(0x3f000000000001fe) // standard (not compressed) descriptors
	rtReserved = uint64(0x1ff)
)

// maxCheckMessages bounds the messages a check keeps: a hostile image can
// make every entry of every table an error. The counts stay exact.
const maxCheckMessages = 100000

// checker accumulates computed references.
type checker struct {
	img       *Image
	refs      []uint32
	fsize     int64
	res       *block.CheckResult
	allocated int64
	frag      int64
	comp      int64
	lastHost  int64
	dropped   int  // messages beyond maxCheckMessages
	badBlocks bool // refcount table entries QEMU rebuilds the structures for
	pastEOF   int  // references a cluster or more past the end of the file
}

func (c *checker) note(msg string) {
	if len(c.res.Messages) < maxCheckMessages {
		c.res.Messages = append(c.res.Messages, msg)
	} else {
		c.dropped++
	}
}

func (c *checker) errorf(format string, a ...any) {
	c.res.Corruptions++
	c.note(fmt.Sprintf(format, a...))
}

// inc counts a reference to the clusters under [off, off+n). As in QEMU,
// the last cluster may lie partly past the end of the file, but a region
// that reaches a cluster or more past it is a corruption and counts
// nothing: the references cannot be trusted, and clusters the file lacks
// get no refcounts (a hostile image could name any offset).
func (c *checker) inc(off, n int64) {
	if n <= 0 {
		return
	}
	if off < 0 || off > maxHostOffset || n > maxHostOffset || off+n-c.fsize >= c.img.cs {
		c.pastEOF++
		c.errorf("ERROR: counting reference for region exceeding the end of the file by one cluster or more: offset %#x size %#x", off, n)
		return
	}
	for cl := off >> c.img.cbits; cl <= (off+n-1)>>c.img.cbits; cl++ {
		for cl >= int64(len(c.refs)) {
			c.refs = append(c.refs, 0)
		}
		if c.refs[cl] != ^uint32(0) {
			c.refs[cl]++
		}
	}
}

// loadL2 loads an L2 table for the check. As qemu-img does, it reads
// whatever the offset names: a table cut short by the end of the file is
// zero-padded (what its present part references must still count, or
// those clusters would look leaked and a repair would free them), and an
// unaligned offset is read where it points. A cached table is taken from
// the cache, as refcounts are, so that the check judges the image as this
// open sees it.
func (c *checker) loadL2(off int64) (*table, error) {
	img := c.img
	if off&(img.cs-1) == 0 {
		if t := img.l2c.get(off); t != nil {
			return t, nil
		}
		if off+img.cs <= c.fsize {
			return img.loadTable(img.l2c, off, "L2 table")
		}
	}
	buf := make([]byte, img.cs)
	if off < c.fsize {
		if err := readFull(img.f, buf[:min(img.cs, c.fsize-off)], off); err != nil {
			return nil, fmt.Errorf("qcow2: L2 table at %#x: %w", off, err)
		}
	}
	return &table{off: off, buf: buf}, nil
}

// walkL1 counts an L1 table's references; active adds allocation and
// fragmentation statistics as qemu-img does. Entries are judged as QEMU
// judges them, so that the counts agree: a misaligned L2 table or data
// cluster is reported and still counted where it points.
func (c *checker) walkL1(l1 []uint64, active bool) {
	img := c.img
	for i, e1 := range l1 {
		if e1 == 0 {
			continue
		}
		if e1&l1Reserved != 0 {
			c.errorf("ERROR found L1 entry with reserved bits set: %x", e1)
		}
		l2off := int64(e1 & offsetMask)
		c.inc(l2off, img.cs)
		if l2off&(img.cs-1) != 0 {
			c.errorf("ERROR l2_offset=%x: Table is not cluster aligned; L1 entry corrupted", l2off)
		}
		t, err := c.loadL2(l2off)
		if err != nil {
			c.res.CheckErrors++
			c.note(fmt.Sprintf("ERROR: %v", err))
			continue
		}
		// QEMU counts fragmentation within each L2 table.
		c.lastHost = 0
		for j := 0; j < 1<<img.l2Bits; j++ {
			c.checkL2Entry(img.getEntry(t, j), int64(i)<<img.l2Bits+int64(j), active)
		}
	}
}

// checkL2Entry counts the references of the L2 entry of guest cluster vc.
func (c *checker) checkL2Entry(e l2e, vc int64, active bool) {
	img := c.img
	if e.compressed() {
		if img.df != nil {
			c.errorf("ERROR compressed cluster at guest offset %#x in an image with an external data file; L2 entry corrupted", vc<<img.cbits)
			return
		}
		if e.copied() {
			c.errorf("ERROR: coffset=%x: copied flag must never be set for compressed clusters", e.d&img.compOffMask)
		}
		if img.ext && e.bm != 0 {
			c.errorf("ERROR compressed cluster %d with non-zero subcluster allocation bitmap, entry=%#x", vc&(1<<img.l2Bits-1), e.d)
			return
		}
		_, _, rs, rl := img.compRange(e)
		c.inc(rs, rl)
		if active {
			c.allocated++
			c.comp++
			c.frag++
		}
		return
	}
	if e.d&l2Reserved != 0 {
		c.errorf("ERROR found l2 entry with reserved bits set: %x", e.d)
	}
	h := e.host()
	if h == 0 {
		if img.ext && uint32(e.bm) != 0 {
			c.errorf("ERROR: Unallocated cluster has non-zero subcluster allocation map")
		}
		return
	}
	if img.ext && uint32(e.bm)&uint32(e.bm>>32) != 0 {
		c.errorf("ERROR offset=%x: Allocated cluster has corrupted subcluster allocation bitmap", h)
	}
	if h&(img.cs-1) != 0 {
		what := "Data"
		if img.ext && uint32(e.bm) == 0 || !img.ext && e.d&flagZero != 0 {
			what = "Preallocated"
		}
		c.errorf("ERROR offset=%x: %s cluster is not properly aligned; L2 entry corrupted.", h, what)
	}
	if active {
		c.allocated++
		if c.lastHost != 0 && h != c.lastHost {
			c.frag++
		}
		c.lastHost = h + img.cs
	}
	if img.df != nil {
		// Data file clusters are not refcounted; their place is fixed.
		if h != vc<<img.cbits+img.cs {
			c.errorf("ERROR offset=%x: data file cluster of guest offset %#x is not at its guest offset; L2 entry corrupted", h-img.cs, vc<<img.cbits)
		}
		return
	}
	c.inc(h, img.cs)
}

// computeRefs counts every reference the image's structures make.
// withRefcounts includes the refcount table and blocks themselves.
func (img *Image) computeRefs(res *block.CheckResult, withRefcounts bool) (*checker, error) {
	fsize, err := img.f.Size()
	if err != nil {
		return nil, err
	}
	n := (fsize + img.cs - 1) >> img.cbits
	if n > maxCheckClusters {
		return nil, fmt.Errorf("qcow2: image file too large to check (%d clusters)", n)
	}
	c := &checker{img: img, refs: make([]uint32, n), res: res, fsize: fsize}
	c.inc(0, img.cs)
	h := img.h
	c.inc(int64(h.l1Offset), int64(len(img.l1))*8)
	c.walkL1(img.l1, true)
	c.inc(int64(h.snapshotsOffset), img.snapshotTableSize())
	for _, s := range img.snapshots {
		c.inc(int64(s.l1Offset), int64(s.l1Size)*8)
		l1, err := img.readL1(s.l1Offset, s.l1Size)
		if err != nil {
			res.CheckErrors++
			res.Messages = append(res.Messages, fmt.Sprintf("ERROR: %v", err))
			continue
		}
		c.walkL1(l1, false)
	}
	c.countBitmaps()
	if withRefcounts {
		c.inc(int64(h.reftableOffset), int64(h.reftableClusters)<<img.cbits)
		// Last, as in QEMU: a refcount block must be referenced once.
		for i, e := range img.reftable {
			off := int64(e & refOffsetMask)
			switch {
			case e&rtReserved != 0:
				c.errorf("ERROR refcount table entry %d has reserved bits set", i)
				c.badBlocks = true
			case off&(img.cs-1) != 0:
				c.errorf("ERROR refcount block %d is not cluster aligned; refcount table entry corrupted", i)
				c.badBlocks = true
			case off < 0 || off>>img.cbits >= int64(len(c.refs)):
				c.errorf("ERROR refcount block %d is outside image", i)
			case off != 0:
				c.inc(off, img.cs)
				if r := c.refs[off>>img.cbits]; r != 1 {
					c.errorf("ERROR refcount block %d refcount=%d", i, r)
					c.badBlocks = true
				}
			}
		}
	}
	return c, nil
}

// checkLocked runs a check and the repairs mode allows; rebuild forces a
// rebuild of the refcount structures (a dirty image).
func (img *Image) checkLocked(mode block.RepairMode, rebuild bool) (*block.CheckResult, error) {
	// A damaged snapshot table comes first: until it is rewritten, the
	// clusters only its discarded snapshots hold cannot be judged, so
	// without -r all nothing else is repaired either.
	var fixedFirst []string
	if len(img.snapDropped) > 0 {
		if mode&block.RepairErrors == 0 && !rebuild {
			mode = block.RepairNone
		} else {
			if err := img.writeSnapshotTable(); err != nil {
				return nil, fmt.Errorf("qcow2: rewriting the snapshot table: %w", err)
			}
			if err := img.flushLocked(false); err != nil {
				return nil, err
			}
			for _, d := range img.snapDropped {
				fixedFirst = append(fixedFirst, "Repaired: "+d)
			}
			img.snapDropped = nil
		}
	}
	// As QEMU does, -r all turns a preallocated zero cluster whose offset
	// is misaligned into a plain zero cluster: it reads as zeros either way.
	if mode&block.RepairErrors != 0 && img.h.version >= 3 {
		n, err := img.fixMisalignedPrealloc()
		if err != nil {
			return nil, err
		}
		fixedFirst = append(fixedFirst, n...)
	}
	p, err := img.checkPass()
	if err != nil {
		return nil, err
	}
	res := p.res
	if mode == block.RepairNone && !rebuild {
		return res, nil
	}
	// As qemu-img check -r leaks: where only rebuilding the refcount
	// structures would do, repairing leaks alone is refused.
	if mode&block.RepairErrors == 0 && !rebuild && p.qemuRebuild {
		res.CheckErrors++
		res.Messages = append(res.Messages, "ERROR need to rebuild refcount structures (repair them with -r all)")
		return res, nil
	}
	// A table that could not be read hides references: the clusters it
	// points to look leaked, and repairing would free live data. QEMU
	// repairs nothing after such a failure either.
	if res.CheckErrors > 0 {
		if rebuild {
			return nil, fmt.Errorf("qcow2: cannot rebuild the refcounts of a dirty image: %d tables could not be read", res.CheckErrors)
		}
		return res, nil
	}
	// As in QEMU, COPIED flags are judged after the refcounts are repaired,
	// so only those still wrong then count as fixed corruptions.
	firstLeaks, firstCorr := res.Leaks, res.Corruptions-p.copiedErrs
	repaired := len(fixedFirst) > 0
	if rebuild || (p.needRebuild && mode&block.RepairErrors != 0) {
		if err := img.rebuildRefcounts(); err != nil {
			return nil, err
		}
		repaired = true
	} else if res.Leaks > 0 && mode&block.RepairLeaks != 0 || res.Corruptions > 0 && mode&block.RepairErrors != 0 {
		if err := img.fixRefcountsInPlace(mode); err != nil {
			return nil, err
		}
		repaired = true
	}
	if mode&block.RepairErrors != 0 || rebuild {
		if n, err := img.fixCopied(); err != nil {
			return nil, err
		} else if n > 0 {
			repaired = true
			firstCorr += n
		}
	}
	if !repaired {
		return res, nil
	}
	if err := img.flushLocked(false); err != nil {
		return nil, err
	}
	p2, err := img.checkPass()
	if err != nil {
		return nil, err
	}
	res2 := p2.res
	res2.LeaksFixed = max(firstLeaks-res2.Leaks, 0)
	res2.CorruptionsFixed = max(firstCorr-res2.Corruptions, 0) + len(fixedFirst)
	res2.Messages = append(append(fixedFirst, res.Messages...), res2.Messages...)
	return res2, nil
}

// fixMisalignedPrealloc makes the active tree's preallocated zero clusters
// with a misaligned host offset plain zero clusters, and returns a message
// for each. img.mu held exclusively.
func (img *Image) fixMisalignedPrealloc() ([]string, error) {
	fsize, err := img.f.Size()
	if err != nil {
		return nil, err
	}
	var msgs []string
	for _, e1 := range img.l1 {
		l2off := int64(e1 & offsetMask)
		if !img.rewritableL2(l2off, fsize) {
			continue
		}
		t, err := img.loadTable(img.l2c, l2off, "L2 table")
		if err != nil {
			return nil, err
		}
		for j := 0; j < 1<<img.l2Bits; j++ {
			e := img.getEntry(t, j)
			h := e.host()
			if e.compressed() || h&(img.cs-1) == 0 {
				continue
			}
			switch {
			case img.ext && uint32(e.bm) == 0:
				img.setEntry(t, j, l2e{bm: e.bm &^ 0xffffffff})
			case !img.ext && e.d&flagZero != 0:
				img.setEntry(t, j, l2e{d: flagZero})
			default:
				continue
			}
			msgs = append(msgs, fmt.Sprintf("Repairing offset=%x: Preallocated cluster is not properly aligned; L2 entry corrupted.", h))
		}
	}
	if len(msgs) > 0 {
		if err := img.flushLocked(false); err != nil {
			return nil, err
		}
	}
	return msgs, nil
}

// rewritableL2 reports whether a repair may rewrite the L2 table at l2off:
// one the end of the file cuts short, or a misaligned one, stays as it is,
// since rewriting it would grow the file under references the check could
// not account for, or write over whatever the offset hits.
func (img *Image) rewritableL2(l2off, fsize int64) bool {
	return l2off != 0 && l2off&(img.cs-1) == 0 && l2off+img.cs <= fsize
}

// checkOutcome is what a check pass found.
type checkOutcome struct {
	res *block.CheckResult
	// needRebuild reports refcount errors that only a rebuild fixes
	// safely; qemuRebuild those for which QEMU rebuilds (a referenced
	// cluster with refcount 0, a bad refcount table entry).
	needRebuild, qemuRebuild bool
	copiedErrs               int // COPIED flag errors among the corruptions
}

// checkPass compares computed and stored refcounts.
func (img *Image) checkPass() (checkOutcome, error) {
	res := &block.CheckResult{Filename: img.name, Format: "qcow2"}
	c, err := img.computeRefs(res, true)
	if err != nil {
		return checkOutcome{}, err
	}
	qemuRebuild := c.badBlocks
	// First, as qemu-img reports them before the references.
	var snapMsgs []string
	if img.snapErr != nil {
		snapMsgs = append(snapMsgs, fmt.Sprintf("ERROR %s; snapshots ignored", strings.TrimPrefix(img.snapErr.Error(), "qcow2: ")))
	}
	for _, d := range img.snapDropped {
		snapMsgs = append(snapMsgs, "ERROR "+d+" (repaired by -r all)")
	}
	res.Corruptions += len(snapMsgs)
	res.Messages = append(snapMsgs, res.Messages...)
	copiedErrs := 0
	// References past the end of the file are no reason to rebuild: the
	// rebuilt refcounts would leave those clusters free, and the next
	// allocation would land under the references. Their stale refcounts
	// keep the allocator away meanwhile.
	needRebuild := res.Corruptions-c.pastEOF > 0
	var maxUsed int64 = -1
	for cl := int64(0); cl < int64(len(c.refs)); cl++ {
		ref := uint64(c.refs[cl])
		rc, err := img.refcount(cl)
		if err != nil {
			res.CheckErrors++
			c.note(fmt.Sprintf("ERROR: %v", err))
			needRebuild = true
			continue
		}
		if rc > 0 || ref > 0 {
			maxUsed = cl
		}
		switch {
		case rc == ref:
		case rc < ref:
			c.errorf("ERROR cluster %d refcount=%d reference=%d", cl, rc, ref)
			needRebuild = true
			qemuRebuild = qemuRebuild || rc == 0
		default:
			res.Leaks++
			c.note(fmt.Sprintf("Leaked cluster %d refcount=%d reference=%d", cl, rc, ref))
		}
	}
	// Refcounts of clusters past the end of the file are not looked at,
	// as in QEMU: nothing there is referenced (see inc), and the
	// allocator skips such clusters, so they only waste address space.

	// COPIED flags of the active tree.
	for i, e1 := range img.l1 {
		l2off := int64(e1 & offsetMask)
		if l2off == 0 {
			continue
		}
		rc, err := img.refcount(l2off >> img.cbits)
		if err != nil {
			continue
		}
		if (rc == 1) != (e1&flagCopied != 0) {
			c.errorf("ERROR OFLAG_COPIED L2 cluster: l1_index=%d l1_entry=%x refcount=%d", i, e1, rc)
			copiedErrs++
		}
		t, err := c.loadL2(l2off)
		if err != nil {
			continue
		}
		for j := 0; j < 1<<img.l2Bits; j++ {
			e := img.getEntry(t, j)
			if e.compressed() || e.host() == 0 {
				continue
			}
			rc := uint64(1) // data file clusters are owned by definition
			if img.df == nil {
				if rc, err = img.refcount(e.host() >> img.cbits); err != nil {
					continue
				}
			}
			if (rc == 1) != e.copied() {
				c.errorf("ERROR OFLAG_COPIED data cluster: l2_entry=%x refcount=%d", e.d, rc)
				copiedErrs++
			}
		}
	}
	res.ImageEndOffset = (maxUsed + 1) << img.cbits
	res.TotalClusters = (img.Size() + img.cs - 1) >> img.cbits
	res.AllocatedClusters = c.allocated
	res.FragmentedClusters = c.frag
	res.CompressedClusters = c.comp
	if c.dropped > 0 {
		res.Messages = append(res.Messages, fmt.Sprintf("(%d more messages not shown)", c.dropped))
	}
	return checkOutcome{res: res, needRebuild: needRebuild, qemuRebuild: qemuRebuild, copiedErrs: copiedErrs}, nil
}

// fixRefcountsInPlace sets each wrong refcount to the computed value where
// that needs no new refcount block.
func (img *Image) fixRefcountsInPlace(mode block.RepairMode) error {
	res := &block.CheckResult{}
	c, err := img.computeRefs(res, true)
	if err != nil {
		return err
	}
	if res.CheckErrors > 0 {
		return fmt.Errorf("qcow2: not repairing refcounts: %d tables could not be read", res.CheckErrors)
	}
	for cl := int64(0); cl < int64(len(c.refs)); cl++ {
		ref := uint64(c.refs[cl])
		rc, err := img.refcount(cl)
		if err != nil {
			return err
		}
		if rc > ref && mode&block.RepairLeaks != 0 || rc < ref && mode&block.RepairErrors != 0 {
			if err := img.setRefcount(cl, ref); err != nil {
				return err
			}
		}
	}
	img.freeHint = 0
	return nil
}

// rebuildRefcounts writes a fresh refcount table and blocks after the last
// used cluster, from references computed by walking the image, and points
// the header at them. The old structures become free space.
func (img *Image) rebuildRefcounts() error {
	res := &block.CheckResult{}
	c, err := img.computeRefs(res, false)
	if err != nil {
		return err
	}
	if res.CheckErrors > 0 {
		return fmt.Errorf("qcow2: not rebuilding refcounts: %d tables could not be read", res.CheckErrors)
	}
	end := int64(1)
	for cl := int64(len(c.refs)) - 1; cl >= 0; cl-- {
		if c.refs[cl] > 0 {
			end = cl + 1
			break
		}
	}
	// References past the end of the file stay corruptions: giving them
	// refcounts would let a hostile image make us write blocks without end.
	R := int64(1) << img.rbBits
	var nb, nt int64
	for {
		total := end + nb + nt
		nb2 := (total + R - 1) / R
		nt2 := (nb2*8 + img.cs - 1) >> img.cbits
		if nb2 == nb && nt2 == nt {
			break
		}
		nb, nt = nb2, nt2
	}
	if nt<<img.cbits > maxReftableBytes {
		return fmt.Errorf("qcow2: image too large for a refcount table")
	}
	ref := func(cl int64) uint64 {
		switch {
		case cl >= end && cl < end+nb+nt:
			return 1
		case cl < int64(len(c.refs)):
			return uint64(c.refs[cl])
		}
		return 0
	}
	table := make([]uint64, nt<<img.cbits/8)
	blk := make([]byte, img.cs)
	for b := int64(0); b < nb; b++ {
		clear(blk)
		for i := int64(0); i < R; i++ {
			v := ref(b*R + i)
			if v > img.rcMax() {
				return fmt.Errorf("qcow2: cluster %d has %d references, more than %d-bit refcounts hold", b*R+i, v, 1<<img.rcBits)
			}
			img.rcPut(blk, i, v)
		}
		off := (end + b) << img.cbits
		if _, err := img.f.WriteAt(blk, off); err != nil {
			return fmt.Errorf("qcow2: writing refcount block: %w", err)
		}
		table[b] = uint64(off)
	}
	toff := (end + nb) << img.cbits
	if _, err := img.f.WriteAt(encodeTable(table), toff); err != nil {
		return fmt.Errorf("qcow2: writing refcount table: %w", err)
	}
	if err := img.sync(); err != nil {
		return err
	}
	img.h.reftableOffset = uint64(toff)
	img.h.reftableClusters = uint32(nt)
	if err := img.writeHeaderSynced(); err != nil {
		return err
	}
	img.reftable = table
	img.tablesChanged()
	img.rtDirty, img.rtMoved = false, false
	img.rbc.clear()
	img.pending = map[int64]int64{}
	img.pendingFrees = 0
	img.freeHint = 0
	img.compNext = 0
	return nil
}

// countBitmaps adds the references of persistent dirty bitmaps (their
// directory, tables and data clusters), which QEMU counts while the
// bitmaps autoclear bit says the extension is valid.
func (c *checker) countBitmaps() {
	img := c.img
	if img.h.autoclear&autoclearBitmaps == 0 {
		return
	}
	ext, _ := img.h.ext(extBitmaps)
	if len(ext) < 24 {
		return
	}
	nb := be32(ext)
	dirSize := be64(ext[8:])
	dirOff := be64(ext[16:])
	// Sizes are checked against the file before they size a buffer.
	if nb == 0 || nb > 65535 || dirSize > bmMaxDirSize || int64(dirOff)&(img.cs-1) != 0 ||
		dirOff > uint64(c.fsize) || dirSize > uint64(c.fsize)-dirOff {
		c.errorf("ERROR bitmap directory at %#x (%d bytes) is invalid", dirOff, dirSize)
		return
	}
	dir := make([]byte, dirSize)
	if err := readFull(img.f, dir, int64(dirOff)); err != nil {
		c.errorf("ERROR reading bitmap directory: %v", err)
		return
	}
	c.inc(int64(dirOff), int64(dirSize))
	for i, p := uint32(0), uint64(0); i < nb; i++ {
		if p+24 > dirSize {
			c.errorf("ERROR bitmap directory entry %d beyond the directory", i)
			return
		}
		e := dir[p:]
		toff := int64(be64(e))
		tsize := int64(be32(e[8:]))
		nameSize := uint64(be16(e[18:]))
		extra := uint64(be32(e[20:]))
		p += (24 + extra + nameSize + 7) &^ 7
		if toff&(img.cs-1) != 0 || tsize > maxL1Bytes/8 || toff < 0 || toff > c.fsize || tsize*8 > c.fsize-toff {
			c.errorf("ERROR bitmap table of bitmap %d is invalid", i)
			continue
		}
		c.inc(toff, tsize*8)
		tbl := make([]byte, tsize*8)
		if err := readFull(img.f, tbl, toff); err != nil {
			c.errorf("ERROR reading bitmap table: %v", err)
			continue
		}
		for j := int64(0); j < tsize; j++ {
			if off := int64(be64(tbl[j*8:]) & offsetMask); off != 0 {
				c.inc(off, img.cs)
			}
		}
	}
}
