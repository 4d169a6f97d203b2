package qcow2

import (
	"vdisk/block"
)

// maxStatusBytes bounds one BlockStatus answer; callers loop.
const (
	maxStatusBytes    = 1 << 40
	maxStatusClusters = 1 << 18
)

// BlockStatus reports this layer's view, as QEMU's qcow2 driver does:
// data clusters with their host offsets, zero clusters (with the host
// offset of a preallocated one), compressed clusters without one, and
// unallocated ranges with neither data nor zero status.
func (img *Image) BlockStatus(off, n int64) ([]block.Extent, error) {
	if err := block.CheckRange(off, n, img.Size()); err != nil {
		return nil, err
	}
	if n == 0 {
		return nil, nil
	}
	// Bound the work of one call by the clusters it may visit; callers loop.
	n = min(n, maxStatusBytes, maxStatusClusters<<img.cbits)
	var out []block.Extent
	img.mu.RLock()
	err := img.mapRange(off, n, func(s seg) error {
		e := block.Extent{Offset: s.goff, Length: s.n, HostOffset: img.reportHost(s.host)}
		switch s.k {
		case kData:
			e.Status = block.StatusData
		case kZero:
			e.Status = block.StatusZero
		}
		if s.host >= 0 {
			e.File = img.dataName()
		}
		switch s.k {
		case kCompressed:
			e.Status = block.StatusData | block.StatusCompressed
		}
		if k := len(out); k > 0 && block.Mergeable(out[k-1], e) {
			out[k-1].Length += e.Length
		} else {
			out = append(out, e)
		}
		return nil
	})
	prealloc := err == nil && img.metadataPreallocated()
	img.mu.RUnlock()
	if err != nil {
		return nil, err
	}
	if !prealloc {
		return out, nil
	}
	if img.df != nil {
		// The data clusters are in the data file, as QEMU's recursion
		// into it finds.
		return block.RefineZero(img.df, out)
	}
	return block.RefineZero(img.f, out)
}

// metadataPreallocated reports whether many more clusters are in use than
// the file has space allocated for, which is how QEMU recognises an image
// made with preallocation=metadata; only for those does QEMU ask the file
// where its holes are (and qemu-img map shows zero data there). Decided
// once per open, as QEMU does. img.mu held (either mode).
func (img *Image) metadataPreallocated() bool {
	img.preallocOnce.Do(func() {
		as, ok := img.f.(block.AllocatedSizer)
		if !ok {
			return
		}
		real, err := as.AllocatedSize()
		if err != nil {
			return
		}
		fsize, err := img.f.Size()
		if err != nil {
			return
		}
		realClusters := real >> img.cbits
		threshold := max(realClusters*10/9, realClusters+2)
		end := (fsize + img.cs - 1) >> img.cbits
		count := int64(0)
		for c := int64(0); c < end && count < threshold; c++ {
			rc, err := img.refcount(c)
			if err != nil {
				return
			}
			if rc != 0 {
				count++
			}
		}
		img.prealloc = count >= threshold
	})
	return img.prealloc
}
