package vhd

import (
	"bytes"
	"encoding/binary"
	"testing"

	"vdisk/block"
)

// TestLeakRepairSparesBadEntries: check -r leaks must not move a
// healthy block onto space that bad (mutually overlapping) BAT entries
// still point at. If it does, the moved block overlaps them, is itself
// judged bad at the next open, and a later check -r all clears it: a
// healthy block's data is lost.
func TestLeakRepairSparesBadEntries(t *testing.T) {
	base, want := leakyImage(t)
	const batAt = 3 * sectorSize
	// Blocks 1, 3 and 4 are leaked; make entry 5 overlap entry 2 by
	// pointing it one sector into block 2.
	e2 := binary.BigEndian.Uint32(base[batAt+8:])
	binary.BigEndian.PutUint32(base[batAt+20:], e2+1)
	f := &memFile{b: base}
	img, err := Open(f, &block.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	m := img.(*Image)
	if len(m.badEntry) != 2 {
		t.Fatalf("bad entries before: %v", m.badEntry)
	}
	if _, err := m.Check(block.RepairLeaks); err != nil {
		t.Fatal(err)
	}
	img.Close()
	img, err = Open(f, &block.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	m = img.(*Image)
	if len(m.badEntry) != 2 {
		t.Errorf("check -r leaks made healthy blocks bad: %v", m.badEntry)
	}
	for _, b := range []int64{0, 6, 7} {
		p := make([]byte, 4096)
		if _, err := img.ReadAt(p, b<<12); err != nil {
			t.Errorf("block %d: %v", b, err)
		} else if !bytes.Equal(p, want[b<<12:(b+1)<<12]) {
			t.Errorf("block %d: content differs", b)
		}
	}
}
