package qcow2

import (
	"strings"
	"testing"
)

// The host offset of a compressed cluster has 62 - (cluster_bits - 8)
// bits; the sector count takes the bits above. The encoder takes every
// offset the field holds, keeping both fields apart, and refuses the rest.
func TestCompDescriptorBound(t *testing.T) {
	for _, cbits := range []uint{9, 12, 16, 21} {
		img := &Image{cbits: cbits, cs: 1 << cbits}
		img.initCompressedFields()
		limit := int64(1) << (62 - (cbits - 8))
		n := img.cs - 1 // the longest stream Precompress stores
		for _, host := range []int64{512, 3<<cbits + 17, limit - img.cs, limit - 1} {
			d, err := img.compDescriptor(host, n)
			if err != nil {
				t.Fatalf("cluster_bits %d: offset %#x: %v", cbits, host, err)
			}
			off, got, rs, rl := img.compRange(l2e{d: d})
			if d&^(flagCompressed|img.compOffMask|img.csizeMask<<img.csizeShift) != 0 || d&flagCompressed == 0 {
				t.Fatalf("cluster_bits %d: descriptor %#x has bits outside its fields", cbits, d)
			}
			if off != host || got < n || rs+rl < host+n || rl > img.cs+512 {
				t.Fatalf("cluster_bits %d: offset %#x, %d bytes: descriptor %#x reads back as offset %#x, %d bytes (range %#x+%d)", cbits, host, n, d, off, got, rs, rl)
			}
		}
		for _, host := range []int64{limit, limit + 512, limit | 1<<(62-(cbits-8)+1)} {
			if host > 1<<62 {
				continue
			}
			d, err := img.compDescriptor(host, n)
			if err == nil || !strings.Contains(err.Error(), "too large for compressed writes") {
				t.Fatalf("cluster_bits %d: offset %#x beyond the field: got descriptor %#x, error %v", cbits, host, d, err)
			}
		}
	}
}
