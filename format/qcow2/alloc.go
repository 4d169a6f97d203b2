package qcow2

import (
	"encoding/binary"
	"fmt"
	"sort"

	"vdisk/block"
)

// maxHostCluster bounds host offsets to what an L2 entry can hold.
const maxHostOffset = int64(1) << 56

// allocClusters allocates n contiguous free clusters and returns the host
// offset of the first. Their refcounts are raised in the cache only; the
// flush order writes refcounts before anything that refers to them.
// img.mu held exclusively.
func (img *Image) allocClusters(n int64) (int64, error) {
	if n <= 0 {
		return 0, fmt.Errorf("qcow2: allocating %d clusters", n)
	}
	s, err := img.findFree(n)
	if err != nil {
		return 0, err
	}
	if err := img.claimClusters(s, n); err != nil {
		return 0, err
	}
	return s << img.cbits, nil
}

// claimClusters gives the free clusters [s, s+n) refcount 1. They are
// reserved meanwhile, so that a refcount block the refcount updates
// create is not put on them.
func (img *Image) claimClusters(s, n int64) error {
	if err := img.checkAlloc(s, n); err != nil {
		return err
	}
	if (s+n)<<img.cbits > maxHostOffset {
		return fmt.Errorf("qcow2: image file would exceed %d bytes", maxHostOffset)
	}
	img.reserved = append(img.reserved, [2]int64{s, s + n})
	defer func() { img.reserved = img.reserved[:len(img.reserved)-1] }()
	for c := s; c < s+n; c++ {
		if err := img.setRefcount(c, 1); err != nil {
			return err
		}
	}
	return nil
}

// findFree finds n contiguous clusters with refcount 0 that no allocation
// in progress has reserved, from the lowest candidate up, as QEMU's
// alloc_clusters_noref does. Clusters in use are skipped a word of
// refcounts at a time, so that long runs of them cost little: those of a
// full image, and those a damaged image's refcounts claim past the end of
// the file, which QEMU's check leaves alone as well.
func (img *Image) findFree(n int64) (int64, error) {
	start, run := int64(0), int64(0)
	seenFree := false
	for c := max(img.freeHint, 1); ; {
		if c<<img.cbits >= maxHostOffset {
			return 0, fmt.Errorf("qcow2: no free cluster below %#x, the largest host offset: the refcounts mark every cluster up to there as used", maxHostOffset)
		}
		bi := c >> img.rbBits
		if bi >= int64(len(img.reftable)) && !img.reservedFrom(c) {
			// Past the refcount table everything is free.
			if run == 0 {
				start = c
			}
			return start, nil
		}
		free := img.reservedAt(c) < 0
		if free && bi < int64(len(img.reftable)) {
			if off := int64(img.reftable[bi] & refOffsetMask); off != 0 {
				t, err := img.loadTable(img.rbc, off, "refcount block")
				if err != nil {
					return 0, err
				}
				i := c & (1<<img.rbBits - 1)
				if j := img.nextFreeEntry(t.buf, i); j > i {
					// Clusters c up to the next free one are in use.
					run = 0
					c += j - i
					if !seenFree {
						img.freeHint = c
					}
					continue
				}
			}
		}
		if !free {
			run = 0
			c++
			if !seenFree {
				img.freeHint = c
			}
			continue
		}
		seenFree = true
		if run == 0 {
			start = c
		}
		run++
		if run == n {
			return start, nil
		}
		c++
	}
}

// nextFreeEntry returns the index of the first refcount of zero in
// refcount block b from index i on, or the number of entries in a block.
// A 64-bit word with no zero field is passed over at once.
func (img *Image) nextFreeEntry(b []byte, i int64) int64 {
	per := int64(1) << img.rbBits
	w := uint(1) << img.rcBits
	perWord := int64(64 / w)
	// lo has the lowest bit of every w-bit field set, hi the highest:
	// (x - lo) &^ x & hi is nonzero exactly when a field of x is zero.
	var lo uint64
	for s := uint(0); s < 64; s += w {
		lo |= 1 << s
	}
	hi := lo << (w - 1)
	for i < per {
		if i%perWord == 0 {
			// The fields' order in the word does not matter, only
			// that they stay whole.
			x := binary.LittleEndian.Uint64(b[i/perWord*8:])
			if (x-lo)&^x&hi == 0 {
				i += perWord
				continue
			}
		}
		if img.rcGet(b, i) == 0 {
			return i
		}
		i++
	}
	return per
}

func (img *Image) reservedFrom(c int64) bool {
	for _, r := range img.reserved {
		if r[1] > c {
			return true
		}
	}
	return false
}

// punch gives freed clusters' space back to the file system.
func (img *Image) punch(clusters []int64) {
	hp, ok := img.f.(block.HolePuncher)
	if !ok {
		return
	}
	for i := 0; i < len(clusters); {
		j := i + 1
		for j < len(clusters) && clusters[j] == clusters[j-1]+1 {
			j++
		}
		hp.PunchHole(clusters[i]<<img.cbits, int64(j-i)<<img.cbits)
		i = j
	}
}

// allocBytes allocates n bytes (at most one cluster) for a compressed
// stream, packed right after the previous one as QEMU's qcow2_alloc_bytes
// does: a stream that does not fit in the rest of the current cluster runs
// on into the next cluster when that one is free, and starts a fresh
// cluster otherwise. Every host cluster the bytes touch gets one more
// reference, so a cluster's refcount is the number of streams in it.
func (img *Image) allocBytes(n int64) (int64, error) {
	if n <= 0 || n > img.cs {
		return 0, fmt.Errorf("qcow2: allocating %d bytes for compressed data", n)
	}
	off := img.compNext
	if off != 0 {
		// A cluster whose refcount is at its maximum takes no more
		// streams (with 1-bit refcounts, none after the first).
		rc, err := img.refcount(off >> img.cbits)
		if err != nil {
			return 0, err
		}
		if rc == 0 || rc >= img.rcMax() {
			off = 0
		}
	}
	if off != 0 {
		if end := (off | (img.cs - 1)) + 1; off+n > end {
			next := end >> img.cbits
			free, err := img.clusterFree(next)
			if err != nil {
				return 0, err
			}
			if free {
				if err := img.claimClusters(next, 1); err != nil {
					return 0, err
				}
			} else {
				off = 0
			}
		}
	}
	if off != 0 {
		if err := img.addRefcount(off>>img.cbits, 1); err != nil {
			return 0, err
		}
	} else {
		var err error
		if off, err = img.allocClusters(1); err != nil {
			return 0, err
		}
	}
	img.compNext = off + n
	if img.compNext&(img.cs-1) == 0 {
		img.compNext = 0
	}
	return off, nil
}

// clusterFree reports whether host cluster c may be allocated: refcount 0
// and not being allocated.
func (img *Image) clusterFree(c int64) (bool, error) {
	if img.reservedAt(c) >= 0 || c<<img.cbits >= maxHostOffset {
		return false, nil
	}
	rc, err := img.refcount(c)
	return rc == 0, err
}

// applyPending applies the queued refcount decrements. Called by flush
// only after the metadata that dropped the references is durable.
func (img *Image) applyPending() error {
	if len(img.pending) == 0 {
		return nil
	}
	idx := make([]int64, 0, len(img.pending))
	for c := range img.pending {
		idx = append(idx, c)
	}
	sort.Slice(idx, func(a, b int) bool { return idx[a] < idx[b] })
	var freed []int64
	img.pendingFrees = 0
	for _, c := range idx {
		d := img.pending[c]
		delete(img.pending, c)
		if img.compNext != 0 && img.compNext>>img.cbits == c {
			img.compNext = 0
		}
		if err := img.addRefcount(c, -d); err != nil {
			return err
		}
		if rc, _ := img.refcount(c); rc == 0 {
			// A freed metadata cluster must not be served from the cache
			// once it is reused for something else.
			img.l2c.drop(c << img.cbits)
			img.rbc.drop(c << img.cbits)
			freed = append(freed, c)
		}
	}
	img.punch(freed)
	return nil
}
