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
// and clears bad BAT entries; with RepairLeaks it trims unreferenced space
// at the end of the file by moving the footer back.
func (m *Image) Check(mode block.RepairMode) (*block.CheckResult, error) {
	res := &block.CheckResult{Filename: m.name, Format: "vhd"}
	if mode != block.RepairNone && m.fileRO {
		return nil, fmt.Errorf("vhd: %s: %w: cannot repair an image opened read-only", m.name, block.ErrReadOnly)
	}
	// Repairs exclude guest I/O for their duration.
	m.allocMu.Lock()
	defer m.allocMu.Unlock()
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
	end := m.dataEnd()
	footerPos := fsize - footerSize
	if m.footerDirty {
		footerPos = end
	}
	var used []region
	used = append(used, m.meta...)
	m.batMu.RLock()
	alloc := int64(0)
	for i, e := range m.bat {
		if e != batUnused && m.badEntry[uint32(i)] == "" {
			used = append(used, region{int64(e) * sectorSize, int64(e)*sectorSize + m.blockTotal, ""})
			alloc++
		}
	}
	m.batMu.RUnlock()
	res.TotalClusters = int64(len(m.bat))
	res.AllocatedClusters = alloc
	sort.Slice(used, func(a, b int) bool { return used[a].start < used[b].start })
	pos := int64(0)
	for _, r := range used {
		if r.start-pos >= m.blockTotal {
			res.Leaks += int((r.start - pos) / m.blockTotal)
			msg("Leaked space of %d bytes at %#x (not referenced by the BAT)", r.start-pos, pos)
		}
		pos = max(pos, r.end)
	}
	trailing := footerPos - end
	if trailing > 0 {
		res.Leaks += int((trailing + m.blockTotal - 1) / m.blockTotal)
		msg("Leaked space of %d bytes at %#x, before the footer (a block allocation interrupted by a crash)", trailing, end)
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
		if trailing > 0 && fixLeak {
			res.LeaksFixed += int((trailing + m.blockTotal - 1) / m.blockTotal)
		}
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
	if res.Corruptions == res.CorruptionsFixed && res.CorruptionsFixed > 0 {
		m.damage = nil
		m.readOnly = m.fileRO
	}
	return res, nil
}

var _ block.Checker = (*Image)(nil)
