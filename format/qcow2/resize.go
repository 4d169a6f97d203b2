package qcow2

import (
	"errors"
	"fmt"

	"vdisk/block"
)

// Resize changes the virtual size. Growing enlarges the L1 table as needed;
// shrinking (only with shrink set) frees every cluster past the new end.
func (img *Image) Resize(size int64, shrink bool) error {
	if img.ro || img.checkOnly {
		return block.ErrReadOnly
	}
	img.lockMeta()
	defer img.mu.Unlock()
	if img.closed {
		return block.ErrClosed
	}
	if img.hasBitmaps() {
		// QEMU cannot resize inconsistent bitmaps either, and this
		// driver's bitmaps are all marked in use.
		return errors.New("qcow2: cannot resize an image with persistent bitmaps, which vdisk does not maintain (remove them first: qemu-img bitmap --remove)")
	}
	// As QEMU: snapshot sizes are only required from version 3 on, so a
	// version 2 snapshot may not say what size to return to. Version 3
	// images resize either way; applying a snapshot restores its size.
	if len(img.snapshots) > 0 && img.h.version < 3 {
		return errors.New("qcow2: Can't resize a v2 image which has snapshots")
	}
	old := img.Size()
	if err := img.resizeLocked(size, shrink, true); err != nil {
		return err
	}
	if size > old {
		if err := img.growDataFile(size); err != nil {
			return err
		}
		if img.dfRaw {
			if err := img.zeroDataFile(old, size-old, true); err != nil {
				return err
			}
		}
	}
	return img.flushLocked(false)
}

func (img *Image) l1Needed(size int64) int64 {
	per := img.cs << img.l2Bits
	return (size + per - 1) / per
}

func (img *Image) resizeLocked(size int64, shrink, touchData bool) error {
	if size < 0 || size%512 != 0 {
		return fmt.Errorf("qcow2: image size must be a multiple of 512 bytes (got %d)", size)
	}
	if size > 1<<62 {
		return fmt.Errorf("qcow2: image size %d too large", size)
	}
	old := img.Size()
	if size < old && !shrink {
		return errors.New("qcow2: use the --shrink option to shrink the image; data beyond the new size is lost")
	}
	if need := img.l1Needed(size); need > int64(len(img.l1)) {
		if err := img.growL1(need); err != nil {
			return err
		}
	}
	if touchData && size < old {
		if err := img.freeFrom(size); err != nil {
			return err
		}
	}
	img.h.size = uint64(size)
	img.headerDirty = true
	img.size.Store(size)
	if touchData && size > old {
		// The new area must read as zeros even where the cluster straddling
		// the old end or a longer backing file holds data.
		if err := img.zeroGrown(old, size); err != nil {
			return err
		}
	}
	return nil
}

// freeFrom unmaps every cluster from the one containing size onwards (the
// partial cluster at the new end keeps its data), and L2 tables that only
// map clusters past the end.
func (img *Image) freeFrom(size int64) error {
	first := (size + img.cs - 1) >> img.cbits
	last := (img.Size() + img.cs - 1) >> img.cbits
	for vc := first; vc < last; vc++ {
		if l1i := vc >> img.l2Bits; l1i >= int64(len(img.l1)) || img.l1[l1i]&offsetMask == 0 {
			vc = (l1i+1)<<img.l2Bits - 1
			continue
		}
		e, err := img.lookup(vc)
		if err != nil {
			return err
		}
		if e == (l2e{}) {
			continue
		}
		t, idx, err := img.l2ForWrite(vc)
		if err != nil {
			return err
		}
		e = img.getEntry(t, idx)
		img.setEntry(t, idx, l2e{})
		img.freeEntry(e)
	}
	for i := img.l1Needed(size); i < int64(len(img.l1)); i++ {
		if off := int64(img.l1[i] & offsetMask); off != 0 {
			img.l1[i] = 0
			img.tablesChanged()
			img.l1Dirty = true
			img.free(off, img.cs)
		}
	}
	return nil
}

func (img *Image) zeroGrown(old, size int64) error {
	zeroTo := old
	if img.backing != nil {
		zeroTo = min(size, max(old, img.backing.Size()))
	}
	if rem := old & (img.cs - 1); rem != 0 {
		cend := min(old-rem+img.cs, size)
		e, err := img.lookup(old >> img.cbits)
		if err != nil {
			return err
		}
		if e != (l2e{}) || img.backing != nil {
			if err := img.writeLocked(make([]byte, cend-old), old, nil); err != nil {
				return err
			}
		}
		old = cend
	}
	if zeroTo <= old {
		return nil
	}
	if img.h.version >= 3 {
		return img.zeroClusters(old>>img.cbits, (zeroTo+img.cs-1)>>img.cbits, true)
	}
	buf := make([]byte, min(zeroTo-old, 1<<20))
	for pos := old; pos < zeroTo; pos += int64(len(buf)) {
		n := min(int64(len(buf)), zeroTo-pos)
		if err := img.writeLocked(buf[:n], pos, nil); err != nil {
			return err
		}
	}
	return nil
}

// growL1 moves the L1 table to new clusters with room for n entries. The
// new table is written and synced before the header is switched to it.
func (img *Image) growL1(n int64) error {
	if n*8 > maxL1Bytes {
		return fmt.Errorf("qcow2: image too large: L1 table would exceed %d bytes", maxL1Bytes)
	}
	if err := img.flushLocked(false); err != nil {
		return err
	}
	nl1 := make([]uint64, n)
	copy(nl1, img.l1)
	off, err := img.allocClusters((n*8 + img.cs - 1) >> img.cbits)
	if err != nil {
		return err
	}
	buf := make([]byte, ((n*8+img.cs-1)>>img.cbits)<<img.cbits)
	copy(buf, encodeTable(nl1))
	if _, err := img.f.WriteAt(buf, off); err != nil {
		return fmt.Errorf("qcow2: writing L1 table: %w", err)
	}
	oldOff, oldLen := int64(img.h.l1Offset), int64(len(img.l1))*8
	img.l1 = nl1
	img.tablesChanged()
	img.h.l1Offset = uint64(off)
	img.h.l1Size = uint32(n)
	img.l1Moved = true
	img.l1Dirty = false
	img.free(oldOff, oldLen)
	return img.flushLocked(false)
}
