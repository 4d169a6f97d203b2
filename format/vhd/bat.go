package vhd

import (
	"encoding/binary"
	"fmt"
	"sort"
)

const batUnused = 0xFFFFFFFF

// region is a byte range of the container used by metadata or a block.
type region struct {
	start, end int64
	what       string
}

// parseBAT decodes the table and sorts out entries that cannot be trusted:
// blocks that reach past the data area or overlap metadata or each other.
// Those are returned as problems (index -> reason) instead of failing, so
// that check can report and clear them; open refuses writes while any exist.
func parseBAT(raw []byte, n int, blockTotal, dataEnd int64, meta []region) ([]uint32, map[uint32]string) {
	bat := make([]uint32, n)
	bad := map[uint32]string{}
	type blk struct {
		idx        uint32
		start, end int64
	}
	var used []blk
	for i := range bat {
		e := binary.BigEndian.Uint32(raw[4*i:])
		bat[i] = e
		if e == batUnused {
			continue
		}
		start := int64(e) * sectorSize
		end := start + blockTotal
		if end > dataEnd {
			bad[uint32(i)] = fmt.Sprintf("BAT entry %d: block at %#x..%#x reaches past the end of the data area (%#x)", i, start, end, dataEnd)
			continue
		}
		overlap := ""
		for _, r := range meta {
			if start < r.end && r.start < end {
				overlap = r.what
				break
			}
		}
		if overlap != "" {
			bad[uint32(i)] = fmt.Sprintf("BAT entry %d: block at %#x overlaps the %s", i, start, overlap)
			continue
		}
		used = append(used, blk{uint32(i), start, end})
	}
	sort.Slice(used, func(a, b int) bool { return used[a].start < used[b].start })
	for k := 1; k < len(used); k++ {
		p, c := used[k-1], used[k]
		if c.start < p.end {
			bad[c.idx] = fmt.Sprintf("BAT entry %d: block at %#x overlaps the block of entry %d at %#x", c.idx, c.start, p.idx, p.start)
			if _, pb := bad[p.idx]; !pb {
				bad[p.idx] = fmt.Sprintf("BAT entry %d: block at %#x overlaps the block of entry %d at %#x", p.idx, p.start, c.idx, c.start)
			}
			// Keep the farther-reaching block as the reference for the next.
			if c.end < p.end {
				used[k] = p
			}
		}
	}
	return bat, bad
}
