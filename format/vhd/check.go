package vhd

import (
	"encoding/binary"
	"fmt"
	"sort"

	"vdisk/block"
)

// Check verifies the footer and its copy, the dynamic header, the BAT
// (entries past the end or overlapping) and looks for space no block
// uses. With RepairErrors it rewrites the footer, its copy and the header
// and clears bad BAT entries; with RepairLeaks it moves the last blocks
// into unreferenced space between blocks and trims the end of the file by
// moving the footer back.
//
// It excludes guest I/O while it runs: a repair moves blocks and rewrites
// BAT entries, and a write landing in a block's old place during the move
// would be lost; even a plain check reads the table and file end as one.
func (m *Image) Check(mode block.RepairMode) (*block.CheckResult, error) {
	res := &block.CheckResult{Filename: m.name, Format: "vhd"}
	if mode != block.RepairNone && m.fileRO {
		return nil, fmt.Errorf("vhd: %s: %w: cannot repair an image opened read-only", m.name, block.ErrReadOnly)
	}
	m.ioMu.Lock()
	defer m.ioMu.Unlock()
	fsize, err := m.f.Size()
	if err != nil {
		return nil, err
	}
	res.ImageEndOffset = fsize
	if m.dtype == typeFixed {
		return res, nil
	}
	fixErr := mode&block.RepairErrors != 0
	fixLeak := mode&block.RepairLeaks != 0
	msg := func(format string, a ...any) { res.Messages = append(res.Messages, fmt.Sprintf(format, a...)) }

	// Bad BAT entries.
	m.batMu.RLock()
	bad := make([]uint32, 0, len(m.badEntry))
	for i := range m.badEntry {
		bad = append(bad, i)
	}
	m.batMu.RUnlock()
	sort.Slice(bad, func(a, b int) bool { return bad[a] < bad[b] })
	for _, i := range bad {
		res.Corruptions++
		why := m.badEntry[i]
		if !fixErr {
			msg("ERROR %s", why)
			continue
		}
		var ent [4]byte
		binary.BigEndian.PutUint32(ent[:], batUnused)
		if _, err := m.f.WriteAt(ent[:], int64(m.hdr.TableOffset)+4*int64(i)); err != nil {
			return nil, fmt.Errorf("vhd: clearing BAT entry %d: %w", i, err)
		}
		m.batMu.Lock()
		m.bat[i] = batUnused
		delete(m.badEntry, i)
		m.batMu.Unlock()
		m.bitmaps.drop(int64(i))
		res.CorruptionsFixed++
		msg("Repaired: %s; entry cleared (the block's data is lost)", why)
	}
	if fixErr && len(bad) > 0 {
		// The cleared entries are on disk before compaction may copy a
		// block into what they pointed at.
		if err := m.f.Sync(); err != nil {
			return nil, err
		}
	}

	if m.headerDirty {
		res.Corruptions++
		if fixErr {
			hb := append([]byte(nil), m.hdrRaw...)
			binary.BigEndian.PutUint32(hb[36:], checksum(hb, 36))
			if _, err := m.f.WriteAt(hb, int64(m.footer.DataOffset)); err != nil {
				return nil, fmt.Errorf("vhd: rewriting dynamic header: %w", err)
			}
			m.headerDirty = false
			res.CorruptionsFixed++
			msg("Repaired: dynamic header checksum")
		} else {
			msg("ERROR dynamic header checksum is wrong")
		}
	}

	// Space between the last block and the footer is leaked; so are gaps
	// between blocks at least a block long.
	fsize0 := fsize
	gaps, alloc := m.gaps(fsize)
	res.TotalClusters = int64(len(m.bat))
	res.AllocatedClusters = alloc
	for _, g := range gaps {
		res.Leaks += int(g.len() / m.blockTotal)
		msg("Leaked space of %d bytes at %#x (not referenced by the BAT)", g.len(), g.start)
	}
	end := m.dataEnd()
	footerPos := fsize - footerSize
	if m.footerDirty {
		footerPos = end
	}
	trailing := footerPos - end
	if trailing > 0 {
		res.Leaks += int((trailing + m.blockTotal - 1) / m.blockTotal)
		msg("Leaked space of %d bytes at %#x, before the footer (a block allocation interrupted by a crash)", trailing, end)
	}
	if fixLeak && len(m.badEntry) > 0 && (len(gaps) > 0 || trailing > 0) {
		// Blocks are only moved, and the file only cut, once the table
		// can be trusted.
		msg("Leaked space not reclaimed while the BAT has bad entries; 'vdisk check -r all' repairs both")
		fixLeak = false
	}
	if fixLeak && len(gaps) > 0 {
		moved, err := m.compact(gaps)
		if moved > 0 {
			msg("Repaired: %d blocks moved into leaked space", moved)
		}
		if err != nil {
			return nil, err
		}
		end = m.dataEnd()
		trailing = footerPos - end
	}

	if m.footerDirty {
		res.Corruptions++
	}
	moveFooter := m.footerDirty && fixErr || trailing > 0 && fixLeak
	if moveFooter {
		// The footer goes right after the data and the file ends there.
		fb := m.footerRaw
		if _, err := m.f.WriteAt(fb, end); err != nil {
			return nil, fmt.Errorf("vhd: writing footer at %#x: %w", end, err)
		}
		if _, err := m.f.WriteAt(fb, 0); err != nil {
			return nil, fmt.Errorf("vhd: writing footer copy: %w", err)
		}
		if err := m.f.Sync(); err != nil {
			return nil, err
		}
		if err := m.f.Truncate(end + footerSize); err != nil {
			return nil, fmt.Errorf("vhd: truncating after the footer: %w", err)
		}
		m.batMu.Lock()
		m.nextFree = end
		m.batMu.Unlock()
		if m.footerDirty {
			res.CorruptionsFixed++
			msg("Repaired: footer and its copy at offset 0 rewritten")
			m.footerDirty = false
		}
		res.ImageEndOffset = end + footerSize
	} else if m.footerDirty {
		msg("ERROR %s", m.damage[0])
	}
	if err := m.f.Sync(); err != nil {
		return nil, err
	}
	if fixLeak && res.Leaks > 0 {
		// What is left is what could not be reclaimed.
		left := 0
		gaps, _ := m.gaps(fsize0)
		for _, g := range gaps {
			left += int(g.len() / m.blockTotal)
		}
		if fsize, err = m.f.Size(); err != nil {
			return nil, err
		}
		if t := fsize - footerSize - m.dataEnd(); t > 0 {
			left += int((t + m.blockTotal - 1) / m.blockTotal)
		}
		res.LeaksFixed = max(res.Leaks-left, 0)
	}
	if res.Corruptions == res.CorruptionsFixed && res.CorruptionsFixed > 0 {
		m.damage = nil
		m.readOnly = m.fileRO
	}
	return res, nil
}

var _ block.Checker = (*Image)(nil)

func (r region) len() int64 { return r.end - r.start }

// gaps lists the holes between metadata and blocks (below the end of the
// data) that can hold at least one block, in file order, and counts the
// valid blocks.
func (m *Image) gaps(fsize int64) ([]region, int64) {
	var blocks, bad []region
	m.batMu.RLock()
	for i, e := range m.bat {
		if e == batUnused {
			continue
		}
		r := region{int64(e) * sectorSize, int64(e)*sectorSize + m.blockTotal, "block"}
		if m.badEntry[uint32(i)] == "" {
			blocks = append(blocks, r)
		} else if r.start < fsize {
			// Not trusted, but not free either: what a bad entry points
			// at may be data a repair of the table could still want.
			bad = append(bad, region{r.start, min(r.end, fsize), "bad block"})
		}
	}
	m.batMu.RUnlock()
	used := append(append(m.reserved(fsize, blocks), blocks...), bad...)
	alloc := int64(len(blocks))
	sort.Slice(used, func(a, b int) bool { return used[a].start < used[b].start })
	var gaps []region
	pos := int64(0)
	for _, r := range used {
		// Blocks start on sector boundaries.
		if start := (pos + sectorSize - 1) / sectorSize * sectorSize; r.start-start >= m.blockTotal {
			gaps = append(gaps, region{start, r.start, "leak"})
		}
		pos = max(pos, r.end)
	}
	return gaps, alloc
}

// reserved is the metadata a moved block must not land on. A parent
// locator's reserved space is in sectors by the specification and in bytes
// as Hyper-V (and vdisk) write it; the sector reading is kept clear unless
// a block or other metadata sits inside it, which rules it out.
func (m *Image) reserved(fsize int64, blocks []region) []region {
	var out []region
	for _, r := range m.meta {
		if r.what != "parent locator" {
			out = append(out, r)
		}
	}
	fixed := len(out)
	if m.hdr == nil {
		return out
	}
	for _, l := range m.hdr.Locators {
		if l.Code == [4]byte{} || l.DataOff >= uint64(fsize) {
			continue
		}
		start := int64(l.DataOff)
		bytesEnd := start + max(int64(l.DataLen), int64(l.DataSpace))
		sectorsEnd := start + int64(l.DataSpace)*sectorSize
		for _, r := range append(out[:fixed:fixed], blocks...) {
			if r.start < sectorsEnd && start < r.end && r.start >= bytesEnd {
				sectorsEnd = bytesEnd
				break
			}
		}
		out = append(out, region{start, min(max(bytesEnd, sectorsEnd), fsize), "parent locator"})
	}
	return out
}

// testHookCompact, when set by a test, runs after a block is copied and
// before its BAT entry points at the copy.
var testHookCompact func(idx int64)

// compact moves the last block of the file into the first gap before it
// that holds it, and again, until no gap below the last block is big
// enough. Each move copies the block (bitmap and data), syncs, points the
// BAT entry at the copy and syncs again: a crash leaves the entry on the
// old block or on a complete copy, and the other one leaked.
func (m *Image) compact(gaps []region) (int, error) {
	type blk struct {
		idx   int64
		start int64
	}
	var blocks []blk
	m.batMu.RLock()
	for i, e := range m.bat {
		if e != batUnused && m.badEntry[uint32(i)] == "" {
			blocks = append(blocks, blk{int64(i), int64(e) * sectorSize})
		}
	}
	m.batMu.RUnlock()
	sort.Slice(blocks, func(a, b int) bool { return blocks[a].start > blocks[b].start })
	// Moving a block that sits below some metadata (another writer may
	// put the BAT after the blocks) would not let the file shrink.
	fsize, err := m.f.Size()
	if err != nil {
		return 0, err
	}
	live := make([]region, len(blocks))
	for i, b := range blocks {
		live[i] = region{b.start, b.start + m.blockTotal, "block"}
	}
	var metaEnd int64
	for _, r := range m.reserved(fsize, live) {
		metaEnd = max(metaEnd, r.end)
	}
	// Blocks may be up to 1 GiB; they are copied a piece at a time.
	buf := make([]byte, min(m.blockTotal, 1<<20))
	moved, g := 0, 0
	for _, b := range blocks {
		// Gaps only shrink from their start, so one too small stays so.
		for g < len(gaps) && gaps[g].len() < m.blockTotal {
			g++
		}
		if g == len(gaps) || gaps[g].start+m.blockTotal > b.start || b.start < metaEnd {
			break
		}
		to := gaps[g].start
		for o := int64(0); o < m.blockTotal; o += int64(len(buf)) {
			chunk := buf[:min(int64(len(buf)), m.blockTotal-o)]
			if err := readFull(m.f, chunk, b.start+o); err != nil {
				return moved, fmt.Errorf("vhd: reading block %d at %#x to move it: %w", b.idx, b.start+o, err)
			}
			if _, err := m.f.WriteAt(chunk, to+o); err != nil {
				return moved, fmt.Errorf("vhd: copying block %d to %#x: %w", b.idx, to+o, err)
			}
		}
		if err := m.f.Sync(); err != nil {
			return moved, fmt.Errorf("vhd: sync before moving block %d: %w", b.idx, err)
		}
		if testHookCompact != nil {
			testHookCompact(b.idx)
		}
		var ent [4]byte
		binary.BigEndian.PutUint32(ent[:], uint32(to/sectorSize))
		if _, err := m.f.WriteAt(ent[:], int64(m.hdr.TableOffset)+4*b.idx); err != nil {
			return moved, fmt.Errorf("vhd: BAT entry %d: %w", b.idx, err)
		}
		if err := m.f.Sync(); err != nil {
			return moved, fmt.Errorf("vhd: sync after moving block %d: %w", b.idx, err)
		}
		m.batMu.Lock()
		m.bat[b.idx] = uint32(to / sectorSize)
		m.batMu.Unlock()
		gaps[g].start += m.blockTotal
		moved++
	}
	return moved, nil
}
