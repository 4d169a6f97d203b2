package qcow2

import (
	"vdisk/block"
)

// Discard frees whole clusters in the range. Where a backing file would
// show through, the cluster becomes a zero cluster instead (version 3), so
// old backing data does not reappear. Version 2 has no zero clusters:
// unmapping would bring back the backing file's data, so an image with a
// backing file keeps its data, which discard allows. QEMU 7.2 does the
// same (qcow2_co_pdiscard refuses such discards).
func (img *Image) Discard(off, n int64) error {
	if img.ro || img.checkOnly {
		return block.ErrReadOnly
	}
	if err := block.CheckRange(off, n, img.Size()); err != nil {
		return err
	}
	start := (off + img.cs - 1) >> img.cbits
	end := (off + n) >> img.cbits
	if off+n == img.Size() {
		end = (off + n + img.cs - 1) >> img.cbits // the partial last cluster
	}
	if start >= end {
		return nil
	}
	if img.backing != nil && img.h.version < 3 {
		return nil
	}
	img.lockMeta()
	defer img.mu.Unlock()
	if img.closed {
		return block.ErrClosed
	}
	if err := img.zeroClusters(start, end, true); err != nil {
		return err
	}
	if err := img.zeroDataFile(start<<img.cbits, (end-start)<<img.cbits, true); err != nil {
		return err
	}
	return img.afterMetaChange()
}

// zeroClusters makes clusters [start, end) read as zeros: unallocated
// where nothing shows through from a backing file, zero clusters
// otherwise. With unmap false an owned host cluster stays allocated
// (QEMU's preallocated zero cluster). img.mu held exclusively.
func (img *Image) zeroClusters(start, end int64, unmap bool) error {
	for vc := start; vc < end; vc++ {
		if l1i := vc >> img.l2Bits; img.backing == nil && (l1i >= int64(len(img.l1)) || img.l1[l1i]&offsetMask == 0) {
			// Nothing mapped here and nothing shows through: skip the table.
			vc = (l1i+1)<<img.l2Bits - 1
			continue
		}
		e, err := img.lookup(vc)
		if err != nil {
			return err
		}
		var want l2e
		needZero := img.backing != nil
		switch {
		case !needZero && !unmap && img.inPlace(e, 0, img.cs) && !img.ext:
			want = l2e{d: e.d | flagZero}
		case needZero && img.ext:
			want = l2e{bm: 0xffffffff << 32}
		case needZero:
			want = l2e{d: flagZero}
		case !unmap && img.inPlace(e, 0, img.cs) && !img.ext:
			want = l2e{d: e.d | flagZero}
		}
		if e == want {
			continue
		}
		if e == (l2e{}) && !needZero {
			continue
		}
		t, idx, err := img.l2ForWrite(vc)
		if err != nil {
			return err
		}
		e = img.getEntry(t, idx)
		img.setEntry(t, idx, want)
		if e.host() != want.host() || e.compressed() {
			img.freeEntry(e)
		}
	}
	return nil
}

// WriteZeroes uses zero clusters for whole clusters on version 3 images and
// writes zero bytes for the partial clusters at the ends.
func (img *Image) WriteZeroes(off, n int64, flags block.ZeroFlags) error {
	if img.ro || img.checkOnly {
		return block.ErrReadOnly
	}
	if err := block.CheckRange(off, n, img.Size()); err != nil {
		return err
	}
	if n == 0 {
		return nil
	}
	if img.h.version < 3 {
		if flags&block.ZeroFast != 0 {
			return block.ErrNotSupported
		}
		return img.zeroBytes(off, n)
	}
	start := (off + img.cs - 1) >> img.cbits
	end := (off + n) >> img.cbits
	if off+n == img.Size() {
		end = (off + n + img.cs - 1) >> img.cbits
	}
	if start >= end {
		if flags&block.ZeroFast != 0 {
			return block.ErrNotSupported
		}
		return img.zeroBytes(off, n)
	}
	if head := start<<img.cbits - off; head > 0 {
		if err := img.zeroBytes(off, head); err != nil {
			return err
		}
	}
	if tail := off + n - end<<img.cbits; tail > 0 {
		if err := img.zeroBytes(end<<img.cbits, tail); err != nil {
			return err
		}
	}
	img.lockMeta()
	defer img.mu.Unlock()
	if img.closed {
		return block.ErrClosed
	}
	if err := img.zeroClusters(start, end, flags&block.ZeroMayUnmap != 0); err != nil {
		return err
	}
	if err := img.zeroDataFile(start<<img.cbits, (end-start)<<img.cbits, flags&block.ZeroMayUnmap != 0); err != nil {
		return err
	}
	return img.afterMetaChange()
}

// zeroBytes zeroes a range smaller than a cluster (or straddling two).
// With extended L2 entries, the subclusters it covers whole get their
// zero bits, as QEMU does; the rest is written as zero bytes.
func (img *Image) zeroBytes(off, n int64) error {
	if img.ext {
		sc := int64(1) << img.scBits
		if a, b := (off+sc-1)&^(sc-1), (off+n)&^(sc-1); a < b {
			if err := img.zeroBytesPlain(off, a-off); err != nil {
				return err
			}
			if err := img.zeroSubclusters(a, b-a); err != nil {
				return err
			}
			return img.zeroBytesPlain(b, off+n-b)
		}
	}
	return img.zeroBytesPlain(off, n)
}

// zeroSubclusters sets the zero bits of the whole subclusters [off,
// off+n), clearing their allocation bits; the host cluster, if any, stays
// with the entry. A compressed cluster has no subclusters and gets zero
// bytes instead.
func (img *Image) zeroSubclusters(off, n int64) error {
	var plain [][2]int64
	err := func() error {
		img.lockMeta()
		defer img.mu.Unlock()
		if img.closed {
			return block.ErrClosed
		}
		for pos := off; pos < off+n; {
			vc := pos >> img.cbits
			cend := min(off+n, (vc+1)<<img.cbits)
			m := uint64(img.subMask(pos-vc<<img.cbits, cend-vc<<img.cbits))
			e, err := img.lookup(vc)
			if err != nil {
				return err
			}
			switch {
			case e.compressed():
				plain = append(plain, [2]int64{pos, cend - pos})
			case e.bm>>32&m != m:
				t, idx, err := img.l2ForWrite(vc)
				if err != nil {
					return err
				}
				e = img.getEntry(t, idx)
				img.setEntry(t, idx, l2e{d: e.d, bm: e.bm&^m | m<<32})
				if img.dfRaw {
					if err := img.zeroDataFile(pos, cend-pos, false); err != nil {
						return err
					}
				}
			}
			pos = cend
		}
		return img.afterMetaChange()
	}()
	if err != nil {
		return err
	}
	for _, r := range plain {
		if err := img.zeroBytesPlain(r[0], r[1]); err != nil {
			return err
		}
	}
	return nil
}

// zeroBytesPlain writes zeros into a range unless it reads as zeros
// already.
func (img *Image) zeroBytesPlain(off, n int64) error {
	if n <= 0 {
		return nil
	}
	img.mu.RLock()
	already := true
	err := img.mapRange(off, n, func(s seg) error {
		if s.k != kZero && !(s.k == kUnalloc && img.backing == nil) {
			already = false
		}
		return nil
	})
	img.mu.RUnlock()
	if err != nil {
		return err
	}
	if already {
		return nil
	}
	return block.WriteZeroBytes(img, off, n)
}
