package qcow2

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"vdisk/block"
)

const (
	maxSnapshotExtra   = 1024
	maxSnapshotL1Total = 256 << 20
)

// snapshot is one entry of the snapshot table.
type snapshot struct {
	l1Offset    uint64
	l1Size      uint32
	id, name    string
	dateSec     uint32
	dateNsec    uint32
	vmClockNsec uint64
	vmState     uint32
	extra       []byte // kept verbatim; holds the large vm state size, disk size, icount
}

func (s *snapshot) info() block.SnapshotInfo {
	si := block.SnapshotInfo{
		ID: s.id, Name: s.name, VMStateSize: int64(s.vmState),
		DateSec: int64(s.dateSec), DateNsec: int64(s.dateNsec),
		VMClockSec: int64(s.vmClockNsec / 1e9), VMClockNsec: int64(s.vmClockNsec % 1e9),
	}
	if len(s.extra) >= 8 {
		si.VMStateSize = int64(be64(s.extra))
	}
	if len(s.extra) >= 24 {
		if ic := be64(s.extra[16:]); ic != ^uint64(0) {
			v := int64(ic)
			si.ICount = &v
		}
	}
	return si
}

func (s *snapshot) diskSize() (int64, bool) {
	if len(s.extra) >= 16 {
		return int64(be64(s.extra[8:])), true
	}
	return 0, false
}

// loadSnapshots reads and validates the snapshot table. Strict, the first
// problem fails it. Lenient (a repairing check), it keeps the snapshots
// that are sound and returns what it discarded: an entry whose L1 table is
// invalid alone, and everything from an entry that cannot be read or
// located onward, as qemu-img check -r all does.
func (img *Image) loadSnapshots(lenient bool) ([]string, error) {
	h := img.h
	off := int64(h.snapshotsOffset)
	img.snapshots = nil
	img.oldSnapshotTableLen = 0
	var dropped []string
	fail := func(err error) ([]string, error) {
		if !lenient {
			img.snapshots = nil
			return nil, err
		}
		img.oldSnapshotTableLen = 0 // see below
		return append(dropped, strings.TrimPrefix(err.Error(), "qcow2: ")), nil
	}
	if h.nbSnapshots == 0 {
		return nil, nil
	}
	fsize, err := img.f.Size()
	if err != nil {
		return nil, err
	}
	if err := checkTable("snapshot table", h.snapshotsOffset, 1, uint64(img.cs), fsize); err != nil {
		// Nothing of it can be trusted, nor freed.
		return fail(fmt.Errorf("%w; all %d snapshots discarded", err, h.nbSnapshots))
	}
	var total, l1Total int64
	for i := uint32(0); i < h.nbSnapshots; i++ {
		rest := fmt.Sprintf("snapshots %d to %d discarded", i, h.nbSnapshots-1)
		var fixed [40]byte
		if err := readFull(img.f, fixed[:], off); err != nil {
			return fail(fmt.Errorf("qcow2: snapshot table entry %d: %w; %s", i, err, rest))
		}
		s := snapshot{
			l1Offset: be64(fixed[0:]), l1Size: be32(fixed[8:]),
			dateSec: be32(fixed[16:]), dateNsec: be32(fixed[20:]),
			vmClockNsec: be64(fixed[24:]), vmState: be32(fixed[32:]),
		}
		idLen := int64(binary.BigEndian.Uint16(fixed[12:]))
		nameLen := int64(binary.BigEndian.Uint16(fixed[14:]))
		extraLen := int64(be32(fixed[36:]))
		if extraLen > maxSnapshotExtra {
			return fail(fmt.Errorf("qcow2: snapshot %d has too much extra data; %s", i, rest))
		}
		n := (40 + extraLen + idLen + nameLen + 7) &^ 7
		if total+n > maxSnapshotTable {
			return fail(fmt.Errorf("qcow2: snapshot table too large; %s", rest))
		}
		b := make([]byte, extraLen+idLen+nameLen)
		if err := readFull(img.f, b, off+40); err != nil {
			return fail(fmt.Errorf("qcow2: snapshot table entry %d: %w; %s", i, err, rest))
		}
		s.extra = b[:extraLen]
		s.id = string(b[extraLen : extraLen+idLen])
		s.name = string(b[extraLen+idLen:])
		off += n
		total += n
		// The entry itself was read: from here on the table's clusters are
		// its own, and a bad L1 table costs only this snapshot.
		img.oldSnapshotTableLen = total
		var bad error
		switch {
		case s.l1Size > maxL1Bytes/8:
			bad = fmt.Errorf("qcow2: snapshot %q has an L1 table too large", s.name)
		case l1Total+int64(s.l1Size)*8 > maxSnapshotL1Total:
			bad = errors.New("qcow2: snapshot L1 tables too large in total")
		case s.l1Size > 0:
			bad = checkTable("snapshot L1 table", s.l1Offset, uint64(s.l1Size)*8, uint64(img.cs), fsize)
		}
		if bad != nil {
			if !lenient {
				img.snapshots = nil
				return nil, bad
			}
			dropped = append(dropped, fmt.Sprintf("%s; snapshot %s (%s) discarded", strings.TrimPrefix(bad.Error(), "qcow2: "), s.id, s.name))
			continue
		}
		l1Total += int64(s.l1Size) * 8
		img.snapshots = append(img.snapshots, s)
	}
	if lenient && len(dropped) > 0 {
		// The header that located this table is suspect, so its range
		// may be anything, live data included: the rewrite frees none
		// of it, and the leak repair after it frees what really is
		// unreferenced.
		img.oldSnapshotTableLen = 0
	}
	return dropped, nil
}

func (img *Image) snapshotTableSize() int64 { return snapshotTableSize(img.snapshots) }

func snapshotTableSize(snaps []snapshot) int64 {
	var n int64
	for _, s := range snaps {
		n += (40 + int64(len(s.extra)+len(s.id)+len(s.name)) + 7) &^ 7
	}
	return n
}

func encodeSnapshots(snaps []snapshot) []byte {
	b := make([]byte, snapshotTableSize(snaps))
	off := 0
	for _, s := range snaps {
		e := b[off:]
		binary.BigEndian.PutUint64(e[0:], s.l1Offset)
		binary.BigEndian.PutUint32(e[8:], s.l1Size)
		binary.BigEndian.PutUint16(e[12:], uint16(len(s.id)))
		binary.BigEndian.PutUint16(e[14:], uint16(len(s.name)))
		binary.BigEndian.PutUint32(e[16:], s.dateSec)
		binary.BigEndian.PutUint32(e[20:], s.dateNsec)
		binary.BigEndian.PutUint64(e[24:], s.vmClockNsec)
		binary.BigEndian.PutUint32(e[32:], s.vmState)
		binary.BigEndian.PutUint32(e[36:], uint32(len(s.extra)))
		p := 40
		p += copy(e[p:], s.extra)
		p += copy(e[p:], s.id)
		p += copy(e[p:], s.name)
		off += (p + 7) &^ 7
	}
	return b
}

// Snapshots lists the internal snapshots.
func (img *Image) Snapshots() []block.SnapshotInfo {
	img.mu.RLock()
	defer img.mu.RUnlock()
	var out []block.SnapshotInfo
	for _, s := range img.snapshots {
		out = append(out, s.info())
	}
	return out
}

func (img *Image) findSnapshot(name string) int {
	for i, s := range img.snapshots {
		if s.name == name {
			return i
		}
	}
	for i, s := range img.snapshots {
		if s.id == name {
			return i
		}
	}
	return -1
}

// writeSnapshotTable writes the in-memory snapshot list to new clusters and
// points the header at it by the next flush; the old table is freed after.
func (img *Image) writeSnapshotTable() error {
	off, n, err := img.newSnapshotTable(img.snapshots)
	if err != nil {
		return err
	}
	img.useSnapshotTable(img.snapshots, off, n)
	return nil
}

// newSnapshotTable writes the table of snaps to new clusters, which
// nothing refers to until useSnapshotTable, and returns where. On failure
// nothing is left allocated.
func (img *Image) newSnapshotTable(snaps []snapshot) (off, n int64, err error) {
	b := encodeSnapshots(snaps)
	if len(b) == 0 {
		return 0, 0, nil
	}
	if off, err = img.writeNewClusters(b); err != nil {
		return 0, 0, fmt.Errorf("qcow2: writing snapshot table: %w", err)
	}
	return off, int64(len(b)), nil
}

// writeNewClusters writes b to newly allocated clusters and returns where;
// if the write fails, the clusters are freed again.
func (img *Image) writeNewClusters(b []byte) (int64, error) {
	n := int64(len(b))
	off, err := img.allocClusters((n + img.cs - 1) >> img.cbits)
	if err != nil {
		return 0, err
	}
	if _, err := img.f.WriteAt(b, off); err != nil {
		img.free(off, n)
		return 0, err
	}
	return off, nil
}

// useSnapshotTable makes snaps, whose table newSnapshotTable wrote at
// [off, off+n), the snapshot list; the header points to it by the next
// flush, and the old table is freed after that.
func (img *Image) useSnapshotTable(snaps []snapshot, off, n int64) {
	if img.h.nbSnapshots > 0 {
		img.free(int64(img.h.snapshotsOffset), img.oldSnapshotTableLen)
	}
	img.snapshots = snaps
	img.h.snapshotsOffset = uint64(off)
	img.h.nbSnapshots = uint32(len(snaps))
	img.oldSnapshotTableLen = n
	img.headerDirty = true
}

// walkTree calls fn for every L2 table and every host range of data an L1
// table references (fn gets offset, length, and whether it is an L2 table).
func (img *Image) walkTree(l1 []uint64, fn func(off, n int64, isL2 bool) error) error {
	for _, e1 := range l1 {
		l2off := int64(e1 & offsetMask)
		if l2off == 0 {
			continue
		}
		if err := fn(l2off, img.cs, true); err != nil {
			return err
		}
		t, err := img.loadTable(img.l2c, l2off, "L2 table")
		if err != nil {
			return err
		}
		for i := 0; i < 1<<img.l2Bits; i++ {
			e := img.getEntry(t, i)
			if e.compressed() {
				_, _, rs, rl := img.compRange(e)
				if err := fn(rs, rl, false); err != nil {
					return err
				}
			} else if h := e.host(); h != 0 {
				if err := fn(h, img.cs, false); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

func (img *Image) readL1(off uint64, n uint32) ([]uint64, error) {
	buf := make([]byte, int64(n)*8)
	if err := readFull(img.f, buf, int64(off)); err != nil {
		return nil, fmt.Errorf("qcow2: snapshot L1 table at %#x: %w", off, err)
	}
	l1 := make([]uint64, n)
	for i := range l1 {
		l1[i] = be64(buf[i*8:])
	}
	return l1, nil
}

// treeClusters calls fn for each reference to a host cluster that the tree
// of l1 makes: its L2 tables, and the clusters their entries use (a
// compressed stream may reach into a second one).
func (img *Image) treeClusters(l1 []uint64, fn func(c int64) error) error {
	return img.walkTree(l1, func(off, n int64, _ bool) error {
		for c := off >> img.cbits; c <= (off+n-1)>>img.cbits; c++ {
			if err := fn(c); err != nil {
				return err
			}
		}
		return nil
	})
}

// checkHeadroom makes sure, before anything changes, that every cluster
// the tree of l1 references can take one more reference for each
// reference: narrow refcounts (refcount_bits below 16) overflow on
// clusters that several snapshots share or that many compressed streams
// fill. img.mu held exclusively.
func (img *Image) checkHeadroom(l1 []uint64) error {
	fsize, err := img.f.Size()
	if err != nil {
		return err
	}
	// A cluster is referenced once by the tree as a rule: a bitmap of the
	// file's clusters finds the others (compressed clusters, clusters
	// past the end of a damaged image), which are counted in a map. The
	// bitmap covers at most as many clusters as check counts: a sparse
	// file of small clusters would otherwise size it in gigabytes, and
	// clusters past it go to the map, which grows only with references
	// actually read.
	seen := make([]uint64, (min(fsize>>img.cbits, maxCheckClusters)+64)/64)
	multi := map[int64]uint64{}
	rcMax := img.rcMax()
	return img.treeClusters(l1, func(c int64) error {
		var n uint64
		if w, bit := c/64, uint64(1)<<(c%64); w < int64(len(seen)) && seen[w]&bit == 0 {
			seen[w] |= bit
			n = 1
		} else {
			multi[c]++
			n = multi[c]
			if w < int64(len(seen)) {
				n++ // the first reference, in the bitmap
			}
		}
		rc, err := img.refcount(c)
		if err != nil {
			return err
		}
		if n > rcMax || rc > rcMax-n {
			return fmt.Errorf("qcow2: host cluster %#x would need refcount %d, more than refcount_bits=%d allow (at most %d); the image was not changed",
				c<<img.cbits, rc+n, 1<<img.rcBits, rcMax)
		}
		return nil
	})
}

// raiseTreeRefs gives every cluster the tree of l1 references one more
// reference for each reference (checkHeadroom first). If that fails
// midway, the references already added are taken back. img.mu held
// exclusively.
func (img *Image) raiseTreeRefs(l1 []uint64) error {
	var done int64
	err := img.treeClusters(l1, func(c int64) error {
		if err := img.addRefcount(c, 1); err != nil {
			return err
		}
		done++
		return nil
	})
	if err != nil {
		if uerr := img.lowerTreeRefs(l1, done); uerr != nil {
			err = fmt.Errorf("%w (and restoring the refcounts failed: %v)", err, uerr)
		}
	}
	return err
}

var errWalkDone = errors.New("walk done")

// lowerTreeRefs takes back the first n references raiseTreeRefs added
// (all of them for n < 0).
func (img *Image) lowerTreeRefs(l1 []uint64, n int64) error {
	err := img.treeClusters(l1, func(c int64) error {
		if n == 0 {
			return errWalkDone
		}
		n--
		return img.addRefcount(c, -1)
	})
	if errors.Is(err, errWalkDone) {
		return nil
	}
	return err
}

// SnapshotCreate makes an internal snapshot of the current disk state.
// Whatever can fail is done before the active tree changes: the check
// that every shared cluster's refcount has room, and writing the new L1
// and snapshot tables to fresh clusters. A failure leaves the image as it
// was (at most a leaked cluster, if an I/O error also stops the undo).
func (img *Image) SnapshotCreate(name string) error {
	if img.ro || img.checkOnly {
		return block.ErrReadOnly
	}
	if img.df != nil {
		return errors.New("qcow2: internal snapshots are not supported with an external data file")
	}
	img.lockMeta()
	defer img.mu.Unlock()
	if img.closed {
		return block.ErrClosed
	}
	if len(img.snapshots) >= maxSnapshots {
		return errors.New("qcow2: too many snapshots")
	}
	if err := img.flushLocked(false); err != nil {
		return err
	}
	if err := img.checkHeadroom(img.l1); err != nil {
		return err
	}
	maxID := 0
	for _, s := range img.snapshots {
		if n, err := strconv.Atoi(s.id); err == nil && n > maxID {
			maxID = n
		}
	}
	now := time.Now()
	extra := make([]byte, 24)
	binary.BigEndian.PutUint64(extra[8:], uint64(img.Size()))
	binary.BigEndian.PutUint64(extra[16:], ^uint64(0))
	s := snapshot{
		l1Size: uint32(len(img.l1)), id: strconv.Itoa(maxID + 1), name: name,
		dateSec: uint32(now.Unix()), dateNsec: uint32(now.Nanosecond()), extra: extra,
	}
	// Copy of the active L1 table, with COPIED cleared since every table
	// it names is now shared.
	l1 := make([]uint64, len(img.l1))
	for i, e := range img.l1 {
		l1[i] = e &^ flagCopied
	}
	if len(l1) > 0 {
		off, err := img.writeNewClusters(encodeTable(l1))
		if err != nil {
			return fmt.Errorf("qcow2: writing snapshot L1 table: %w", err)
		}
		s.l1Offset = uint64(off)
	}
	snaps := append(img.snapshots[:len(img.snapshots):len(img.snapshots)], s)
	tOff, tLen, err := img.newSnapshotTable(snaps)
	if err != nil {
		img.free(int64(s.l1Offset), int64(s.l1Size)*8)
		return err
	}
	undo := func(err error) error {
		img.free(tOff, tLen)
		img.free(int64(s.l1Offset), int64(s.l1Size)*8)
		return err
	}
	// Every table and cluster the active tree reaches gains a reference.
	if err := img.raiseTreeRefs(img.l1); err != nil {
		return undo(err)
	}
	if err := img.clearCopied(); err != nil {
		// COPIED is right again wherever the refcounts are back to 1.
		if uerr := img.lowerTreeRefs(img.l1, -1); uerr != nil {
			return undo(fmt.Errorf("%w (and restoring the refcounts failed: %v)", err, uerr))
		}
		if _, uerr := img.fixCopied(); uerr != nil {
			return undo(fmt.Errorf("%w (and restoring the COPIED flags failed: %v)", err, uerr))
		}
		return undo(err)
	}
	img.useSnapshotTable(snaps, tOff, tLen)
	return img.flushLocked(false)
}

// clearCopied clears COPIED in the active L1 and its L2 tables.
func (img *Image) clearCopied() error {
	for i, e1 := range img.l1 {
		if e1&offsetMask == 0 {
			continue
		}
		t, err := img.loadTable(img.l2c, int64(e1&offsetMask), "L2 table")
		if err != nil {
			return err
		}
		for j := 0; j < 1<<img.l2Bits; j++ {
			if e := img.getEntry(t, j); e.copied() {
				e.d &^= flagCopied
				img.setEntry(t, j, e)
			}
		}
		img.l1[i] = e1 &^ flagCopied
		img.tablesChanged()
		img.l1Dirty = true
	}
	return nil
}

// fixCopied sets COPIED exactly where the refcount is 1, in the active L1
// and the L2 tables it owns. Pending decrements must be applied.
func (img *Image) fixCopied() (int, error) {
	fixed := 0
	fsize, err := img.f.Size()
	if err != nil {
		return 0, err
	}
	for i, e1 := range img.l1 {
		l2off := int64(e1 & offsetMask)
		if l2off == 0 {
			continue
		}
		rc, err := img.refcount(l2off >> img.cbits)
		if err != nil {
			return fixed, err
		}
		if want := rc == 1; want != (e1&flagCopied != 0) {
			img.l1[i] = e1 ^ flagCopied
			img.tablesChanged()
			img.l1Dirty = true
			fixed++
		}
		if rc != 1 || !img.rewritableL2(l2off, fsize) {
			continue
		}
		t, err := img.loadTable(img.l2c, l2off, "L2 table")
		if err != nil {
			return fixed, err
		}
		for j := 0; j < 1<<img.l2Bits; j++ {
			e := img.getEntry(t, j)
			if e.compressed() || e.host() == 0 {
				continue
			}
			if img.df != nil {
				// Data file clusters have an implicit refcount of 1.
				if !e.copied() {
					e.d |= flagCopied
					img.setEntry(t, j, e)
					fixed++
				}
				continue
			}
			rc, err := img.refcount(e.host() >> img.cbits)
			if err != nil {
				return fixed, err
			}
			if want := rc == 1; want != e.copied() {
				e.d ^= flagCopied
				img.setEntry(t, j, e)
				fixed++
			}
		}
	}
	return fixed, nil
}

// loadSnapshotLocked finds a snapshot by name or id, writes back dirty
// metadata so the refcounts it is about to change are current, and reads
// the snapshot's L1 table. img.mu is held.
func (img *Image) loadSnapshotLocked(name string) (int, []uint64, error) {
	i := img.findSnapshot(name)
	if i < 0 {
		return 0, nil, fmt.Errorf("qcow2: snapshot '%s' not found", name)
	}
	if err := img.flushLocked(false); err != nil {
		return 0, nil, err
	}
	s := img.snapshots[i]
	sl1, err := img.readL1(s.l1Offset, s.l1Size)
	if err != nil {
		return 0, nil, err
	}
	return i, sl1, nil
}

// SnapshotApply reverts the disk to a snapshot. The refcounts are checked
// for room before anything changes; once the active L1 table has switched
// to the snapshot's tree, a failure can only leak clusters.
func (img *Image) SnapshotApply(name string) error {
	if img.ro || img.checkOnly {
		return block.ErrReadOnly
	}
	img.lockMeta()
	defer img.mu.Unlock()
	if img.closed {
		return block.ErrClosed
	}
	i, sl1, err := img.loadSnapshotLocked(name)
	if err != nil {
		return err
	}
	// The snapshot's tree gains its references before the current tree
	// loses its own (after the switch is durable), so a cluster both
	// share needs room for one more.
	if err := img.checkHeadroom(sl1); err != nil {
		return err
	}
	s := img.snapshots[i]
	if size, ok := s.diskSize(); ok && size != img.Size() {
		if err := img.resizeLocked(size, true, false); err != nil {
			return err
		}
		if err := img.flushLocked(false); err != nil {
			return err
		}
	}
	if len(sl1) > len(img.l1) {
		if err := img.growL1(int64(len(sl1))); err != nil {
			return err
		}
		if err := img.flushLocked(false); err != nil {
			return err
		}
	}
	// New references first, then switch the L1 table, then drop the old
	// tree's references once the switch is durable.
	if err := img.raiseTreeRefs(sl1); err != nil {
		return err
	}
	old := append([]uint64(nil), img.l1...)
	for j := range img.l1 {
		img.l1[j] = 0
		if j < len(sl1) {
			img.l1[j] = sl1[j] &^ flagCopied
		}
	}
	img.tablesChanged()
	img.l1Dirty = true
	// Queued only now that nothing active refers to the old tree: if
	// reading one of its tables fails, the rest of it leaks, and nothing
	// still in use is freed.
	if err := img.walkTree(old, func(off, n int64, _ bool) error {
		img.free(off, n)
		return nil
	}); err != nil {
		return err
	}
	if err := img.flushLocked(false); err != nil {
		return err
	}
	if _, err := img.fixCopied(); err != nil {
		return err
	}
	return img.flushLocked(false)
}

// SnapshotDelete removes a snapshot and frees what only it referenced. The
// snapshot table without it is written before anything changes, and its
// tree is freed only once it is gone from the list: a failure leaks
// clusters at most.
func (img *Image) SnapshotDelete(name string) error {
	if img.ro || img.checkOnly {
		return block.ErrReadOnly
	}
	img.lockMeta()
	defer img.mu.Unlock()
	if img.closed {
		return block.ErrClosed
	}
	i, sl1, err := img.loadSnapshotLocked(name)
	if err != nil {
		return err
	}
	s := img.snapshots[i]
	snaps := append(img.snapshots[:i:i], img.snapshots[i+1:]...)
	tOff, tLen, err := img.newSnapshotTable(snaps)
	if err != nil {
		return err
	}
	img.useSnapshotTable(snaps, tOff, tLen)
	if err := img.walkTree(sl1, func(off, n int64, _ bool) error {
		img.free(off, n)
		return nil
	}); err != nil {
		return err
	}
	img.free(int64(s.l1Offset), int64(s.l1Size)*8)
	if err := img.flushLocked(false); err != nil {
		return err
	}
	if _, err := img.fixCopied(); err != nil {
		return err
	}
	return img.flushLocked(false)
}
