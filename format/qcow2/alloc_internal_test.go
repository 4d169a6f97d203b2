package qcow2

import (
	"math/rand"
	"testing"
)

// nextFreeEntry passes over whole words of refcounts in use; it must find
// the same free entry as looking at each refcount, at every width.
func TestNextFreeEntry(t *testing.T) {
	r := rand.New(rand.NewSource(1))
	for rcBits := uint(0); rcBits <= 6; rcBits++ {
		img := &Image{cbits: 9, rcBits: rcBits, rbBits: 9 + 3 - rcBits}
		per := int64(1) << img.rbBits
		for round := 0; round < 200; round++ {
			b := make([]byte, 512)
			for i := int64(0); i < per; i++ {
				v := uint64(0)
				// Mostly in use, with values that have zero bits.
				if r.Intn(max(int(per)/4, 2)) != 0 {
					v = 1 + uint64(r.Int63n(int64(min(img.rcMax(), 1<<62))))
					if r.Intn(2) == 0 {
						v = 1 << uint(r.Intn(1<<rcBits))
					}
				}
				img.rcPut(b, i, v)
			}
			for _, from := range []int64{0, r.Int63n(per), per - 1} {
				want := from
				for want < per && img.rcGet(b, want) != 0 {
					want++
				}
				if got := img.nextFreeEntry(b, from); got != want {
					t.Fatalf("refcount_bits %d: from %d: got %d, want %d", 1<<rcBits, from, got, want)
				}
			}
		}
	}
}
