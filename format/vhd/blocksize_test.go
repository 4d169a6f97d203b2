package vhd

import (
	"bytes"
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"vdisk/block"
)

// handImage lays out a dynamic or differencing disk with any block size,
// bypassing create's checks, as another tool might have made it.
// A differencing disk records parent's id and time stamp when given.
func handImage(t testing.TB, dtype uint32, size int64, bs uint32, locs []locatorData, parent *Footer) []byte {
	t.Helper()
	ft, err := newFooter(size, Geometry{maxCyls, maxHeads, maxSecs})
	if err != nil {
		t.Fatal(err)
	}
	ft.DiskType = dtype
	h := &Header{BlockSize: bs}
	if dtype == typeDifferencing {
		h.ParentName = "parent.vhd"
	}
	if parent != nil {
		h.ParentUUID, h.ParentTimestamp = parent.UniqueID, parent.Timestamp
	}
	f := &memFile{}
	if err := writeDynamic(f, ft, h, locs); err != nil {
		t.Fatal(err)
	}
	return f.b
}

// appendBlock adds block idx, bitmap and data as given, before the footer
// and points its BAT entry at it.
func appendBlock(b []byte, idx int, bitmap, data []byte) []byte {
	be := binary.BigEndian
	pos := len(b) - footerSize
	footer := append([]byte(nil), b[pos:]...)
	b = append(append(append(b[:pos], bitmap...), data...), footer...)
	bat := be.Uint64(b[footerSize+16:])
	be.PutUint32(b[bat+4*uint64(idx):], uint32(pos/sectorSize))
	return b
}

// tinyDifferencing is a differencing disk with 1 KiB blocks laid out as the
// specification says (a one-sector bitmap before each block's data), with
// block 0 allocated and both its sectors marked present.
func tinyDifferencing(t testing.TB, parent *Footer) []byte {
	b := handImage(t, typeDifferencing, 32<<10, 1024, []locatorData{{platW2ru, encodeUTF16("parent.vhd", leUTF16)}}, parent)
	bm := make([]byte, sectorSize)
	bm[0] = 0xC0
	return appendBlock(b, 0, bm, bytes.Repeat([]byte{0x42}, 1024))
}

func TestCreateBlockSizeMinimum(t *testing.T) {
	for _, bs := range []int64{512, 1024, 2048, 3 << 12} {
		opts, err := block.ParseOptions(Format.CreateOptions, nil)
		if err != nil {
			t.Fatal(err)
		}
		opts["size"], opts["block_size"] = int64(64<<10), bs
		err = create(&memFile{}, opts)
		if err == nil || !strings.Contains(err.Error(), "block_size") || !strings.Contains(err.Error(), "4096") {
			t.Fatalf("block_size %d: %v, want a refusal naming block_size and 4096", bs, err)
		}
	}
	// 4 KiB is the smallest: its bitmap is one sector by every reading.
	b := seedImage(t, block.Options{"size": int64(64 << 10), "block_size": int64(4096), "force_size": true})
	if got := binary.BigEndian.Uint32(b[footerSize+32:]); got != 4096 {
		t.Fatalf("block size %d", got)
	}
}

// TestTinyBlockDifferencingRefused: a differencing disk whose blocks are
// too small for a whole-sector bitmap is refused at open, naming the field,
// instead of crashing on its first read or write.
func TestTinyBlockDifferencingRefused(t *testing.T) {
	for _, opts := range []block.OpenOptions{{NoBacking: true}, {NoBacking: true, ReadOnly: true}} {
		_, err := Open(&memFile{b: tinyDifferencing(t, nil)}, &opts)
		if err == nil || !strings.Contains(err.Error(), "block size 1024") || !strings.Contains(err.Error(), "differencing") {
			t.Fatalf("open: %v, want a refusal naming the block size", err)
		}
	}
	// Through the CLI path too, with its parent present.
	dir := t.TempDir()
	pf := &memFile{}
	opts, _ := block.ParseOptions(Format.CreateOptions, nil)
	opts["size"] = int64(64 << 10)
	if err := create(pf, opts); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "parent.vhd"), pf.b, 0o644)
	child := filepath.Join(dir, "c.vhd")
	os.WriteFile(child, tinyDifferencing(t, nil), 0o644)
	if _, err := block.Open(child, block.OpenOptions{}); err == nil || !strings.Contains(err.Error(), "block size 1024") {
		t.Fatalf("open: %v", err)
	}
}

// TestTinyBlockDynamic: a dynamic disk with blocks under 4 KiB (which QEMU
// opens, reading them without a bitmap) can be written, rewritten in place
// and read, and qemu-img reads the same bytes.
func TestTinyBlockDynamic(t *testing.T) {
	for _, bs := range []uint32{512, 1024, 2048} {
		file := filepath.Join(t.TempDir(), "d.vhd")
		if err := os.WriteFile(file, handImage(t, typeDynamic, 64<<10, bs, nil, nil), 0o644); err != nil {
			t.Fatal(err)
		}
		img, err := block.Open(file, block.OpenOptions{})
		if err != nil {
			t.Fatalf("block size %d: %v", bs, err)
		}
		want := make([]byte, img.Size())
		for i, w := range []struct{ off, n int64 }{{100, 200}, {150, 3000}, {0, 512}, {5000, 7}, {5003, 9000}} {
			p := bytes.Repeat([]byte{byte(i + 1)}, int(w.n))
			if _, err := img.WriteAt(p, w.off); err != nil {
				t.Fatalf("block size %d: write %d: %v", bs, i, err)
			}
			copy(want[w.off:], p)
		}
		if err := img.WriteZeroes(160, 100, 0); err != nil {
			t.Fatal(err)
		}
		clear(want[160:260])
		if got := readImage(t, img); !bytes.Equal(got, want) {
			n := 0
			for got[n] == want[n] {
				n++
			}
			t.Fatalf("block size %d: content differs at %d: %x want %x", bs, n, got[n:n+8], want[n:n+8])
		}
		if res, err := img.(block.Checker).Check(block.RepairNone); err != nil || res.Corruptions != 0 || res.Leaks != 0 {
			t.Fatalf("block size %d: check %+v %v", bs, res, err)
		}
		img.Close()
		raw := file + ".raw"
		if out, err := exec.Command("qemu-img", "convert", "-f", "vpc", "-O", "raw", file, raw).CombinedOutput(); err != nil {
			t.Fatalf("qemu-img: %v\n%s", err, out)
		}
		if got, _ := os.ReadFile(raw); !bytes.Equal(got, want) {
			t.Fatalf("block size %d: qemu-img reads different bytes", bs)
		}
	}
}

// TestChainSeedsOpen keeps FuzzOpenChain's stored seeds what they are
// meant to be: a child that opens through the fixed parent, and a child
// with tiny blocks that is refused.
func TestChainSeedsOpen(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "parent.vhd"), fuzzParent(t), 0o644); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{"child-4k-block": "", "child-tiny-block": "block size 1024"} {
		body, err := os.ReadFile(filepath.Join("testdata", "fuzz", "FuzzOpenChain", name))
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(string(body), "\n")
		s, err := strconv.Unquote(strings.TrimSuffix(strings.TrimPrefix(lines[1], "[]byte("), ")"))
		if err != nil {
			t.Fatal(err)
		}
		child := filepath.Join(dir, "child.vhd")
		if err := os.WriteFile(child, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
		img, err := block.Open(child, block.OpenOptions{ReadOnly: true})
		if want != "" {
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Fatalf("%s: %v, want an error naming %q", name, err, want)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		got := readImage(t, img)
		img.Close()
		// The parent's 0xCD at 7000 shows through; the child's 0x11 at 900
		// covers the parent's 0xAB at 1000.
		if got[899] != 0 || got[1000] != 0x11 || got[1599] != 0x11 || got[1600] != 0 || got[7000] != 0xCD || got[9000] != 0x22 {
			t.Fatalf("%s: content through the parent is wrong", name)
		}
	}
}

// TestChildOfTinyBlockParent: a child of a dynamic parent whose blocks are
// under 4 KiB cannot take the parent's block size (no differencing disk
// can have it), so it gets the default, and it opens, reads the parent
// and takes writes.
func TestChildOfTinyBlockParent(t *testing.T) {
	dir := t.TempDir()
	parent := filepath.Join(dir, "p.vhd")
	if err := os.WriteFile(parent, handImage(t, typeDynamic, 64<<10, 1024, nil, nil), 0o644); err != nil {
		t.Fatal(err)
	}
	pimg, err := block.Open(parent, block.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pimg.WriteAt(bytes.Repeat([]byte{0x5a}, 3000), 100); err != nil {
		t.Fatal(err)
	}
	pimg.Close()
	child := filepath.Join(dir, "c.vhd")
	o, err := block.ParseOptions(Format.CreateOptions, [][2]string{{"backing_file", "p.vhd"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := block.Create(child, "vhd", o); err != nil {
		t.Fatal(err)
	}
	img, err := block.Open(child, block.OpenOptions{})
	if err != nil {
		t.Fatalf("the child of a parent with 1 KiB blocks does not open: %v", err)
	}
	defer img.Close()
	if bs := img.(*Image).blockSize; bs != defaultBlockSize {
		t.Fatalf("child block size %d, want the default %d", bs, defaultBlockSize)
	}
	if _, err := img.WriteAt([]byte{1, 2, 3}, 2000); err != nil {
		t.Fatal(err)
	}
	want := make([]byte, img.Size())
	copy(want[100:], bytes.Repeat([]byte{0x5a}, 3000))
	copy(want[2000:], []byte{1, 2, 3})
	if !bytes.Equal(readImage(t, img), want) {
		t.Fatal("the child reads wrong bytes")
	}
}
