package imgtool

import (
	"errors"
	"fmt"
	"strings"

	"vdisk/block"
)

// Map resolves img's extents over [off, off+n) through its backing chain,
// merged as qemu-img map merges them. The range is clamped to the image.
// An empty range (at or past the end, or n of 0) gives one extent of
// length 0 at off, which qemu-img map prints in JSON and omits from its
// table.
func Map(img block.Image, off, n int64) ([]block.Extent, error) {
	size := img.Size()
	if off < 0 {
		return nil, fmt.Errorf("invalid start offset %d", off)
	}
	if off >= size || n <= 0 {
		return []block.Extent{{Offset: off, HostOffset: -1}}, nil
	}
	n = min(n, size-off)
	return block.MapChain(img, off, n)
}

// MapJSON renders extents exactly as qemu-img map --output json prints them.
func MapJSON(exts []block.Extent) string {
	var b strings.Builder
	b.WriteString("[")
	for i, e := range exts {
		if i > 0 {
			b.WriteString(",\n")
		}
		fmt.Fprintf(&b, `{ "start": %d, "length": %d, "depth": %d, "present": %t, "zero": %t, "data": %t`,
			e.Offset, e.Length, e.Depth, e.Status&block.StatusAllocated != 0,
			e.Status&block.StatusZero != 0, e.Status&block.StatusData != 0)
		if e.HostOffset >= 0 {
			fmt.Fprintf(&b, `, "offset": %d`, e.HostOffset)
		}
		b.WriteString("}")
	}
	b.WriteString("]\n")
	return b.String()
}

// ErrUnmappable is returned by MapHuman for data that has no plain host
// offset (compressed clusters), which the human table cannot show.
var ErrUnmappable = errors.New("File contains external, encrypted or compressed clusters.")

// MapHuman renders qemu-img map's table: data extents with their host
// offsets, zero and unallocated ranges left out.
func MapHuman(exts []block.Extent) (string, error) {
	var b strings.Builder
	fmt.Fprintf(&b, "%-16s%-16s%-16s%s\n", "Offset", "Length", "Mapped to", "File")
	for _, e := range exts {
		if e.Status&block.StatusData != 0 && e.HostOffset < 0 {
			return b.String(), ErrUnmappable
		}
		if e.Status&block.StatusData != 0 && e.Status&block.StatusZero == 0 {
			fmt.Fprintf(&b, "%-16s%-16s%-16s%s\n", hex(e.Offset), hex(e.Length), hex(e.HostOffset), e.File)
		}
	}
	return b.String(), nil
}

// hex is C's %#x: no 0x prefix for zero.
func hex(v int64) string {
	if v == 0 {
		return "0"
	}
	return fmt.Sprintf("%#x", v)
}
