package vhd

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"strings"
	"testing"

	"vdisk/block"
)

// journalFile is a memFile that records every change, so that a test can
// rebuild the container as a crash after any of them would leave it.
type journalFile struct {
	memFile
	ops []journalOp
}

type journalOp struct {
	off      int64
	data     []byte // nil: truncate to off
	truncate bool
	sync     bool
}

func (f *journalFile) WriteAt(p []byte, off int64) (int, error) {
	f.ops = append(f.ops, journalOp{off: off, data: append([]byte(nil), p...)})
	return f.memFile.WriteAt(p, off)
}

func (f *journalFile) Truncate(n int64) error {
	f.ops = append(f.ops, journalOp{off: n, truncate: true})
	return f.memFile.Truncate(n)
}

func (f *journalFile) Sync() error {
	f.ops = append(f.ops, journalOp{sync: true})
	return nil
}

// replay applies the first k changes to a copy of base.
func replay(base []byte, ops []journalOp, k int) *memFile {
	f := &memFile{b: append([]byte(nil), base...)}
	for _, op := range ops[:k] {
		switch {
		case op.sync:
		case op.truncate:
			f.Truncate(op.off)
		default:
			f.WriteAt(op.data, op.off)
		}
	}
	return f
}

func readImage(t *testing.T, img block.Image) []byte {
	t.Helper()
	b := make([]byte, img.Size())
	if _, err := img.ReadAt(b, 0); err != nil {
		t.Fatal(err)
	}
	return b
}

// leakyImage builds a dynamic disk with 4 KiB blocks, eight of them
// written, then drops the BAT entries of blocks 1, 3 and 4 so that their
// space is leaked between live blocks. It returns the container and what
// the disk holds.
func leakyImage(t *testing.T) ([]byte, []byte) {
	f := &memFile{}
	opts, err := block.ParseOptions(Format.CreateOptions, nil)
	if err != nil {
		t.Fatal(err)
	}
	opts["size"], opts["block_size"], opts["force_size"] = int64(64<<10), int64(4096), true
	if err := create(f, opts); err != nil {
		t.Fatal(err)
	}
	img, err := Open(f, &block.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	want := make([]byte, img.Size())
	for b := 0; b < 8; b++ {
		// Differing halves, so a block copied whole or in the wrong place shows.
		p := append(bytes.Repeat([]byte{byte(0x10 + b)}, 2048), bytes.Repeat([]byte{byte(0x80 + b)}, 2048)...)
		if _, err := img.WriteAt(p, int64(b)<<12); err != nil {
			t.Fatal(err)
		}
		copy(want[b<<12:], p)
	}
	img.Close()
	const batAt = 3 * sectorSize
	for _, b := range []int{1, 3, 4} {
		binary.BigEndian.PutUint32(f.b[batAt+4*b:], batUnused)
		clear(want[b<<12 : (b+1)<<12])
	}
	return f.b, want
}

func TestCompactInteriorLeaks(t *testing.T) {
	base, want := leakyImage(t)
	jf := &journalFile{memFile: memFile{b: append([]byte(nil), base...)}}
	img, err := Open(jf, &block.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	m := img.(*Image)
	res, err := m.Check(block.RepairNone)
	if err != nil {
		t.Fatal(err)
	}
	if res.Leaks != 3 || res.Corruptions != 0 || len(jf.ops) != 1 || !jf.ops[0].sync {
		t.Fatalf("check without repair: %+v %v (ops %d)", res, res.Messages, len(jf.ops))
	}
	jf.ops = nil
	res, err = m.Check(block.RepairAll)
	if err != nil {
		t.Fatal(err)
	}
	if res.Leaks != 3 || res.LeaksFixed != 3 {
		t.Fatalf("repair: %+v %v", res, res.Messages)
	}
	if got := int64(len(base) - len(jf.b)); got != 3*m.blockTotal {
		t.Fatalf("the file shrank by %d bytes, want %d", got, 3*m.blockTotal)
	}
	if !bytes.Equal(readImage(t, img), want) {
		t.Fatal("content differs after the repair, before reopening")
	}
	img.Close()

	// A crash after any change: the disk reads the same, check finds no
	// corruption, and a repair then leaves a clean, compact image.
	for k := 0; k <= len(jf.ops); k++ {
		f := replay(base, jf.ops, k)
		img, err := Open(f, &block.OpenOptions{})
		if err != nil {
			t.Fatalf("crash after %d of %d changes: open: %v", k, len(jf.ops), err)
		}
		if !bytes.Equal(readImage(t, img), want) {
			t.Fatalf("crash after %d changes: content differs", k)
		}
		m := img.(*Image)
		res, err := m.Check(block.RepairAll)
		if err != nil || res.Corruptions != 0 {
			t.Fatalf("crash after %d changes: repair: %v %+v %v", k, err, res, res.Messages)
		}
		img.Close()
		img, err = Open(f, &block.OpenOptions{})
		if err != nil {
			t.Fatal(err)
		}
		res, err = img.(*Image).Check(block.RepairNone)
		if err != nil || res.Leaks+res.Corruptions != 0 {
			t.Fatalf("crash after %d changes: after repair: %v %+v %v", k, err, res, res.Messages)
		}
		if !bytes.Equal(readImage(t, img), want) || int64(len(f.b)) != int64(len(base))-3*m.blockTotal {
			t.Fatalf("crash after %d changes: after repair: content or size (%d) differs", k, len(f.b))
		}
		img.Close()
	}
}

// TestCompactBATAfterBlocks: another writer's layout with the BAT after
// the blocks. No block is moved, since that could not shrink the file;
// the BAT stays intact, the content readable, and the leaks are reported
// as left.
func TestCompactBATAfterBlocks(t *testing.T) {
	base, want := leakyImage(t)
	img, err := Open(&memFile{b: append([]byte(nil), base...)}, &block.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	m := img.(*Image)
	oldBAT := int64(m.hdr.TableOffset)
	batBytes := int64(m.hdr.MaxEntries) * 4
	hdrOff := int64(m.footer.DataOffset)
	img.Close()
	// Move the BAT to where the footer is and put the footer after it.
	end := int64(len(base)) - footerSize
	foot := append([]byte(nil), base[end:]...)
	bat := append([]byte(nil), base[oldBAT:oldBAT+batBytes]...)
	nb := append(append(append([]byte(nil), base[:end]...), bat...), make([]byte, (sectorSize-batBytes%sectorSize)%sectorSize)...)
	nb = append(nb, foot...)
	clear(nb[oldBAT : oldBAT+batBytes])
	binary.BigEndian.PutUint64(nb[hdrOff+16:], uint64(end))
	binary.BigEndian.PutUint32(nb[hdrOff+36:], checksum(nb[hdrOff:hdrOff+headerSize], 36))
	f := &memFile{b: nb}
	img, err = Open(f, &block.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(readImage(t, img), want) {
		t.Fatal("relocated BAT: content differs")
	}
	res, err := img.(*Image).Check(block.RepairLeaks)
	if err != nil {
		t.Fatal(err)
	}
	if res.Leaks != 3 || res.LeaksFixed != 0 || strings.Contains(fmt.Sprint(res.Messages), "moved") {
		t.Fatalf("repair: leaks %d fixed %d, %v", res.Leaks, res.LeaksFixed, res.Messages)
	}
	img.Close()
	img, err = Open(f, &block.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	if !bytes.Equal(readImage(t, img), want) {
		t.Fatal("after repair: content differs")
	}
	res, err = img.(*Image).Check(block.RepairNone)
	if err != nil || res.Corruptions != 0 {
		t.Fatalf("after repair: %v %+v", err, res)
	}
	if res.Leaks != 3 || len(f.b) != len(nb) {
		t.Fatalf("after: leaks %d, %v; file %d -> %d bytes", res.Leaks, res.Messages, len(nb), len(f.b))
	}
}
