package vhd

import (
	"bytes"
	"testing"

	"vdisk/block"
)

// TestSpanKeepsConcurrentWrite: a write needing read-modify-write of a
// partial sector not yet present must not also rewrite a neighbouring
// sector that is present, because writers of present sectors go in place
// without the block's lock. The hook runs such a writer between the
// read and the write-back; its bytes must survive.
func TestSpanKeepsConcurrentWrite(t *testing.T) {
	_, child := parentPair(t, t.TempDir())
	img, err := block.Open(child, block.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	// Sector 0 present in the child, sector 1 still the parent's.
	if _, err := img.WriteAt(bytes.Repeat([]byte{0x11}, 512), 0); err != nil {
		t.Fatal(err)
	}
	ran := false
	testHookSpan = func() {
		testHookSpan = nil
		ran = true
		// Sector 0 is present: this write takes the lock-free path.
		if _, err := img.WriteAt(bytes.Repeat([]byte{0x22}, 50), 0); err != nil {
			t.Error(err)
		}
	}
	defer func() { testHookSpan = nil }()
	// Bytes 100-511 of sector 0 and 0-99 of sector 1: sector 1 needs the
	// parent's data merged in.
	if _, err := img.WriteAt(bytes.Repeat([]byte{0x33}, 512), 100); err != nil {
		t.Fatal(err)
	}
	if !ran {
		t.Fatal("the write did not take the read-modify-write path")
	}
	want := make([]byte, 1024)
	copy(want, bytes.Repeat([]byte{0x22}, 50))
	copy(want[50:], bytes.Repeat([]byte{0x11}, 50))
	copy(want[100:], bytes.Repeat([]byte{0x33}, 512))
	copy(want[612:], bytes.Repeat([]byte{parentByte}, 412))
	got := make([]byte, 1024)
	if _, err := img.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("concurrent write to a present sector lost:\n got %x\nwant %x", got[:120], want[:120])
	}
}
