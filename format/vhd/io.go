package vhd

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"vdisk/block"
)

func (m *Image) ReadAt(p []byte, off int64) (int, error) {
	m.ioMu.RLock()
	defer m.ioMu.RUnlock()
	if err := block.CheckRange(off, int64(len(p)), m.size); err != nil {
		return 0, err
	}
	if m.dtype == typeFixed {
		if err := m.readFile(p, off); err != nil {
			return 0, fmt.Errorf("vhd: read at %d: %w", off, err)
		}
		return len(p), nil
	}
	return m.perBlock(p, off, m.readBlock)
}

// readFile reads container bytes; a container cut short reads as zeros.
func (m *Image) readFile(p []byte, off int64) error {
	n, err := m.f.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		clear(p[n:])
		return nil
	}
	return err
}

// readParent reads from the parent, as zeros where there is none or it is
// shorter than this disk.
func (m *Image) readParent(p []byte, off int64) error {
	if m.parent == nil {
		clear(p)
		return nil
	}
	psize := m.parent.Size()
	n := int64(len(p))
	if off >= psize {
		clear(p)
		return nil
	}
	if off+n > psize {
		clear(p[psize-off:])
		p = p[:psize-off]
	}
	_, err := m.parent.ReadAt(p, off)
	return err
}

func (m *Image) readBlock(idx, in int64, p []byte) error {
	e, err := m.entry(idx)
	if err != nil {
		return err
	}
	guest := idx*m.blockSize + in
	if e == batUnused {
		if m.dtype == typeDifferencing {
			return m.readParent(p, guest)
		}
		clear(p)
		return nil
	}
	boff := int64(e)*sectorSize + m.bmSize
	if m.dtype == typeDynamic {
		// Like QEMU, a dynamic disk's allocated block is read whole, bitmap
		// or not: writers keep unmarked sectors zero.
		if err := m.readFile(p, boff+in); err != nil {
			return fmt.Errorf("vhd: block %d at %#x: %w", idx, boff, err)
		}
		return nil
	}
	bm, err := m.bitmap(idx, e)
	if err != nil {
		return err
	}
	// Runs of sectors present here are read from the file, the others
	// from the parent.
	pos := int64(0)
	for pos < int64(len(p)) {
		s := (in + pos) / sectorSize
		here := bitSet(bm, s)
		end := pos
		for end < int64(len(p)) && bitSet(bm, (in+end)/sectorSize) == here {
			end = ((in+end)/sectorSize+1)*sectorSize - in
		}
		end = min(end, int64(len(p)))
		var err error
		if here {
			err = m.readFile(p[pos:end], boff+in+pos)
		} else {
			err = m.readParent(p[pos:end], guest+pos)
		}
		if err != nil {
			return fmt.Errorf("vhd: block %d: %w", idx, err)
		}
		pos = end
	}
	return nil
}

// bitmap returns block idx's sector bitmap (read-only), loading it under
// the block's stripe lock so that a load never races a bitmap update.
func (m *Image) bitmap(idx int64, e uint32) ([]byte, error) {
	if bm, ok := m.bitmaps.get(idx); ok {
		return bm, nil
	}
	mu := &m.stripes[idx%int64(len(m.stripes))]
	mu.Lock()
	defer mu.Unlock()
	return m.bitmapLocked(idx, e)
}

func (m *Image) bitmapLocked(idx int64, e uint32) ([]byte, error) {
	if bm, ok := m.bitmaps.get(idx); ok {
		return bm, nil
	}
	bm := make([]byte, m.bmSize)
	if err := readFull(m.f, bm, int64(e)*sectorSize); err != nil {
		return nil, fmt.Errorf("vhd: bitmap of block %d at %#x: %w", idx, int64(e)*sectorSize, err)
	}
	m.bitmaps.put(idx, bm)
	return bm, nil
}

func (m *Image) writable() error {
	if m.readOnly {
		if len(m.damage) > 0 {
			return fmt.Errorf("vhd: %s: %w: the image is damaged (%s); run 'vdisk check -r all'", m.name, block.ErrReadOnly, m.damage[0])
		}
		return block.ErrReadOnly
	}
	return nil
}

func (m *Image) WriteAt(p []byte, off int64) (int, error) {
	m.ioMu.RLock()
	defer m.ioMu.RUnlock()
	return m.writeAt(p, off)
}

// writerAt adapts a method to io.WriterAt.
type writerAt func(p []byte, off int64) (int, error)

func (w writerAt) WriteAt(p []byte, off int64) (int, error) { return w(p, off) }

func (m *Image) writeAt(p []byte, off int64) (int, error) {
	if err := m.writable(); err != nil {
		return 0, err
	}
	if err := block.CheckRange(off, int64(len(p)), m.size); err != nil {
		return 0, err
	}
	if m.dtype == typeFixed {
		if _, err := m.f.WriteAt(p, off); err != nil {
			return 0, fmt.Errorf("vhd: write at %d: %w", off, err)
		}
		return len(p), nil
	}
	return m.perBlock(p, off, m.writeBlock)
}

func (m *Image) writeBlock(idx, in int64, p []byte) error {
	e, err := m.entry(idx)
	if err != nil {
		return err
	}
	if e == batUnused {
		return m.allocWrite(idx, in, p)
	}
	return m.writeAllocated(idx, e, in, p)
}

// sectorSpan widens [in, in+len(p)) of a block to whole sectors, filling
// the widened edges with what the guest sees there now (the parent for a
// differencing disk, zeros otherwise), so that whole sectors can be marked.
//
// With a bitmap (an allocated block), an edge sector already present is not
// widened: writers of present sectors write in place without the stripe
// lock, so reading such a sector and writing it back whole would undo their
// concurrent writes to its other bytes.
func (m *Image) sectorSpan(idx, in int64, p []byte, bm []byte, e uint32) (int64, []byte, error) {
	widen := func(s int64) bool { return bm == nil || !bitSet(bm, s) }
	start, end := in, in+int64(len(p))
	if start%sectorSize != 0 && widen(start/sectorSize) {
		start = start / sectorSize * sectorSize
	}
	if end%sectorSize != 0 && widen(end/sectorSize) {
		end = (end/sectorSize + 1) * sectorSize
	}
	if start == in && end == in+int64(len(p)) {
		return in, p, nil
	}
	buf := make([]byte, end-start)
	fill := func(s int64) error {
		seg := buf[s*sectorSize-start : s*sectorSize-start+sectorSize]
		if bm != nil && (bitSet(bm, s) || m.dtype == typeDynamic) {
			return m.readFile(seg, int64(e)*sectorSize+m.bmSize+s*sectorSize)
		}
		if m.dtype == typeDifferencing {
			return m.readParent(seg, idx*m.blockSize+s*sectorSize)
		}
		return nil
	}
	if start != in {
		if err := fill(start / sectorSize); err != nil {
			return 0, nil, err
		}
	}
	if end != in+int64(len(p)) && (end-sectorSize != start || start == in) {
		if err := fill(end/sectorSize - 1); err != nil {
			return 0, nil, err
		}
	}
	copy(buf[in-start:], p)
	return start, buf, nil
}

// testHookSpan, when set by a test, runs in writeAllocated's
// read-modify-write path between reading the widened span and writing it.
var testHookSpan func()

func (m *Image) writeAllocated(idx int64, e uint32, in int64, p []byte) error {
	s0, s1 := in/sectorSize, (in+int64(len(p))-1)/sectorSize
	boff := int64(e)*sectorSize + m.bmSize
	if m.dtype == typeDynamic && m.bmSize == 0 {
		// Blocks below minBitmapBlock, laid out as QEMU does: no bitmap.
		if _, err := m.f.WriteAt(p, boff+in); err != nil {
			return fmt.Errorf("vhd: block %d: %w", idx, err)
		}
		return nil
	}
	if bm, err := m.bitmap(idx, e); err != nil {
		return err
	} else if allSet(bm, s0, s1) || m.dtype == typeDynamic {
		// Sectors already here, or any sectors of a dynamic disk (whose
		// allocated blocks are read whole), are written in place, in
		// parallel; only the bitmap update is serialised.
		if _, err := m.f.WriteAt(p, boff+in); err != nil {
			return fmt.Errorf("vhd: block %d: %w", idx, err)
		}
		if allSet(bm, s0, s1) {
			return nil
		}
		mu := &m.stripes[idx%int64(len(m.stripes))]
		mu.Lock()
		defer mu.Unlock()
		return m.markLocked(idx, e, s0, s1)
	}
	// Partial sectors not yet present need read-modify-write with the
	// parent's data, serialised per block so that two writers of one
	// sector do not lose each other's bytes.
	mu := &m.stripes[idx%int64(len(m.stripes))]
	mu.Lock()
	defer mu.Unlock()
	bm, err := m.bitmapLocked(idx, e)
	if err != nil {
		return err
	}
	start, buf, err := m.sectorSpan(idx, in, p, bm, e)
	if err != nil {
		return fmt.Errorf("vhd: block %d: %w", idx, err)
	}
	if testHookSpan != nil {
		testHookSpan()
	}
	if _, err := m.f.WriteAt(buf, boff+start); err != nil {
		return fmt.Errorf("vhd: block %d: %w", idx, err)
	}
	return m.markLocked(idx, e, s0, s1)
}

// markLocked sets the bitmap bits of sectors [s0, s1] after their data is
// written. The cached bitmap is replaced, never modified, because readers
// use it without the lock.
func (m *Image) markLocked(idx int64, e uint32, s0, s1 int64) error {
	old, err := m.bitmapLocked(idx, e)
	if err != nil {
		return err
	}
	if allSet(old, s0, s1) {
		return nil
	}
	bm := append([]byte(nil), old...)
	for s := s0; s <= s1; s++ {
		setBit(bm, s)
	}
	lo := s0 / 8 / sectorSize * sectorSize
	hi := (s1/8/sectorSize + 1) * sectorSize
	if _, err := m.f.WriteAt(bm[lo:hi], int64(e)*sectorSize+lo); err != nil {
		m.bitmaps.drop(idx)
		return fmt.Errorf("vhd: bitmap of block %d: %w", idx, err)
	}
	m.bitmaps.put(idx, bm)
	return nil
}

// allocWrite allocates block idx with p written into it. Allocations are
// serialised: the order is new footer past the block, block data and
// bitmap, fsync, then the BAT entry, so a crash at any point leaves either
// the old table (and a leaked, unreferenced block) or a complete block.
func (m *Image) allocWrite(idx, in int64, p []byte) error {
	m.allocMu.Lock()
	defer m.allocMu.Unlock()
	e, err := m.entry(idx)
	if err != nil {
		return err
	}
	if e != batUnused {
		// Another writer allocated it while we waited.
		m.allocMu.Unlock()
		defer m.allocMu.Lock()
		return m.writeAllocated(idx, e, in, p)
	}
	if idx >= int64(len(m.bat)) {
		return fmt.Errorf("vhd: block %d is beyond the BAT (%d entries)", idx, len(m.bat))
	}
	pos := m.nextFree
	if pos/sectorSize > 0xFFFFFFFE || pos+m.blockTotal+footerSize < pos {
		return fmt.Errorf("vhd: the image file cannot grow past %#x", pos)
	}
	start, buf, err := m.sectorSpan(idx, in, p, nil, 0)
	if err != nil {
		return fmt.Errorf("vhd: block %d: %w", idx, err)
	}
	if m.bmSize == 0 && start > 0 {
		// The old footer at pos is normally overwritten by the bitmap; a
		// block without one (QEMU's layout below minBitmapBlock) must
		// overwrite it with zeros, or it would read as guest data.
		buf = append(make([]byte, start), buf...)
		start = 0
	}
	// A dynamic disk's new block is marked present in full, as QEMU does:
	// its unwritten sectors are zeros in the file either way, and later
	// writes then need no bitmap updates. A differencing disk marks only
	// what was written; the rest still comes from the parent.
	bm := make([]byte, m.bmSize)
	if m.dtype == typeDynamic {
		for i := range bm[:m.blockSize/sectorSize/8] {
			bm[i] = 0xFF
		}
	} else {
		for s := start / sectorSize; s < (start+int64(len(buf)))/sectorSize; s++ {
			setBit(bm, s)
		}
	}
	newEnd := pos + m.blockTotal
	if _, err := m.f.WriteAt(m.footerRaw, newEnd); err != nil {
		return fmt.Errorf("vhd: moving the footer to %#x: %w", newEnd, err)
	}
	if _, err := m.f.WriteAt(buf, pos+m.bmSize+start); err != nil {
		return fmt.Errorf("vhd: block %d at %#x: %w", idx, pos, err)
	}
	if _, err := m.f.WriteAt(bm, pos); err != nil {
		return fmt.Errorf("vhd: bitmap of block %d at %#x: %w", idx, pos, err)
	}
	if err := m.f.Sync(); err != nil {
		return fmt.Errorf("vhd: sync before BAT update: %w", err)
	}
	var ent [4]byte
	binary.BigEndian.PutUint32(ent[:], uint32(pos/sectorSize))
	if _, err := m.f.WriteAt(ent[:], int64(m.hdr.TableOffset)+4*idx); err != nil {
		return fmt.Errorf("vhd: BAT entry %d: %w", idx, err)
	}
	// The bitmap is cached before the entry is published: once other
	// writers see the entry they may mark sectors in the cached bitmap,
	// and a put after that would drop their bits.
	m.bitmaps.put(idx, bm)
	m.batMu.Lock()
	m.bat[idx] = uint32(pos / sectorSize)
	m.nextFree = newEnd
	m.batMu.Unlock()
	return nil
}

func (m *Image) Discard(off, n int64) error {
	m.ioMu.RLock()
	defer m.ioMu.RUnlock()
	if err := m.writable(); err != nil {
		return err
	}
	if err := block.CheckRange(off, n, m.size); err != nil {
		return err
	}
	// Blocks cannot be given back without moving others; only a fixed
	// disk can free space, by punching the container.
	if m.dtype == typeFixed {
		if hp, ok := m.f.(block.HolePuncher); ok && n > 0 {
			if err := hp.PunchHole(off, n); err != nil && !errors.Is(err, block.ErrNotSupported) {
				return err
			}
		}
	}
	return nil
}

func (m *Image) WriteZeroes(off, n int64, flags block.ZeroFlags) error {
	m.ioMu.RLock()
	defer m.ioMu.RUnlock()
	if err := m.writable(); err != nil {
		return err
	}
	if err := block.CheckRange(off, n, m.size); err != nil {
		return err
	}
	if n == 0 {
		return nil
	}
	switch m.dtype {
	case typeFixed:
		if flags&block.ZeroMayUnmap != 0 {
			if hp, ok := m.f.(block.HolePuncher); ok && hp.PunchHole(off, n) == nil {
				return nil
			}
		}
		if zr, ok := m.f.(block.ZeroRanger); ok && zr.ZeroRange(off, n) == nil {
			return nil
		}
		if flags&block.ZeroFast != 0 {
			return block.ErrNotSupported
		}
		return block.WriteZeroBytes(m.f, off, n)
	case typeDifferencing:
		if flags&block.ZeroFast != 0 {
			return block.ErrNotSupported
		}
		return block.WriteZeroBytes(writerAt(m.writeAt), off, n)
	}
	// Dynamic: unallocated blocks already read as zeros; allocated ones
	// get zero bytes, or, where the space may go, a hole in the file: the
	// block stays allocated (blocks cannot be given back without moving
	// others), but its data sectors no longer occupy the file system.
	hp, _ := m.f.(block.HolePuncher)
	if flags&block.ZeroMayUnmap == 0 {
		hp = nil
	}
	if flags&block.ZeroFast != 0 {
		for o := off; o < off+n; o = (o/m.blockSize + 1) * m.blockSize {
			e, err := m.entry(o / m.blockSize)
			if err != nil {
				return err
			}
			if e != batUnused {
				return block.ErrNotSupported
			}
		}
		return nil
	}
	for o := off; o < off+n; {
		idx := o / m.blockSize
		next := min((idx+1)*m.blockSize, off+n)
		e, err := m.entry(idx)
		if err != nil {
			return err
		}
		if e != batUnused {
			host := int64(e)*sectorSize + m.bmSize + o - idx*m.blockSize
			if hp == nil || hp.PunchHole(host, next-o) != nil {
				if err := block.WriteZeroBytes(writerAt(m.writeAt), o, next-o); err != nil {
					return err
				}
			}
		}
		o = next
	}
	return nil
}

// maxExtents bounds one BlockStatus answer; callers ask again for the rest.
const maxExtents = 4096

// BlockStatus reports as QEMU's vpc driver does: a fixed disk maps one to
// one onto the container (refined by its holes); a dynamic disk reports each
// allocated block as data at its host offset and unallocated blocks as
// zeros. A differencing disk reports the sectors marked in its bitmaps and
// leaves the rest to the parent.
func (m *Image) BlockStatus(off, n int64) ([]block.Extent, error) {
	m.ioMu.RLock()
	defer m.ioMu.RUnlock()
	if err := block.CheckRange(off, n, m.size); err != nil {
		return nil, err
	}
	if n == 0 {
		return nil, nil
	}
	if m.dtype == typeFixed {
		return block.RefineZero(m.f, []block.Extent{{Offset: off, Length: n, Status: block.StatusData, HostOffset: off, File: m.name}})
	}
	var out []block.Extent
	add := func(x block.Extent) {
		if k := len(out); k > 0 && block.Mergeable(out[k-1], x) {
			out[k-1].Length += x.Length
			return
		}
		out = append(out, x)
	}
	end := off + n
	for o := off; o < end && len(out) < maxExtents; {
		idx, in := o/m.blockSize, o%m.blockSize
		l := min(end-o, m.blockSize-in)
		e, err := m.entry(idx)
		if err != nil {
			return nil, err
		}
		switch {
		case e == batUnused && m.dtype == typeDynamic:
			add(block.Extent{Offset: o, Length: l, Status: block.StatusZero, HostOffset: -1})
		case e == batUnused:
			add(block.Extent{Offset: o, Length: l, HostOffset: -1})
		case m.dtype == typeDynamic:
			add(block.Extent{Offset: o, Length: l, Status: block.StatusData, HostOffset: int64(e)*sectorSize + m.bmSize + in, File: m.name})
		default:
			bm, err := m.bitmap(idx, e)
			if err != nil {
				return nil, err
			}
			for pos := int64(0); pos < l; {
				s := (in + pos) / sectorSize
				segEnd := min(l, (s+1)*sectorSize-in)
				x := block.Extent{Offset: o + pos, Length: segEnd - pos, HostOffset: -1}
				if bitSet(bm, s) {
					x.Status, x.HostOffset, x.File = block.StatusData, int64(e)*sectorSize+m.bmSize+in+pos, m.name
				}
				add(x)
				pos = segEnd
			}
		}
		o += l
	}
	return out, nil
}

// perBlock splits a guest access at block boundaries and hands each piece
// to fn with its block index and offset inside the block.
func (m *Image) perBlock(p []byte, off int64, fn func(idx, in int64, p []byte) error) (int, error) {
	done := 0
	for done < len(p) {
		o := off + int64(done)
		idx, in := o/m.blockSize, o%m.blockSize
		n := int(min(int64(len(p)-done), m.blockSize-in))
		if err := fn(idx, in, p[done:done+n]); err != nil {
			return done, err
		}
		done += n
	}
	return len(p), nil
}
