package qcow2_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"vdisk/block"
)

// overlapImage makes a 16 MiB qemu-img image holding pattern 1 in its
// first 200 KiB, then lets patch damage its metadata.
func overlapImage(t *testing.T, patch func(f *os.File, hdr []byte)) string {
	t.Helper()
	name := filepath.Join(t.TempDir(), "x.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", name, "16M")
	qemuIO(t, name, "qcow2", "write -P 1 0 200k")
	f, err := os.OpenFile(name, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	hdr := make([]byte, 104)
	if _, err := f.ReadAt(hdr, 0); err != nil {
		t.Fatal(err)
	}
	patch(f, hdr)
	return name
}

func TestOverlapCheckRefusesMetadataWrites(t *testing.T) {
	rtOff := func(h []byte) int64 { return int64(binary.BigEndian.Uint64(h[48:])) }
	cases := map[string]func(f *os.File, h []byte){
		// Refcount block 0 missing: every cluster reads as free, header
		// and tables included.
		"reftable-entry-zeroed": func(f *os.File, h []byte) {
			if _, err := f.WriteAt(make([]byte, 8), rtOff(h)); err != nil {
				t.Fatal(err)
			}
		},
		// Refcount block 0 is the L1 table: increments would land in L1.
		"reftable-entry-into-l1": func(f *os.File, h []byte) {
			if _, err := f.WriteAt(h[40:48], rtOff(h)); err != nil {
				t.Fatal(err)
			}
		},
	}
	for name, patch := range cases {
		t.Run(name, func(t *testing.T) {
			img := overlapImage(t, patch)
			before, err := os.ReadFile(img)
			if err != nil {
				t.Fatal(err)
			}
			im, err := block.Open(img, block.OpenOptions{})
			if err != nil {
				t.Fatal(err)
			}
			_, werr := im.WriteAt(bytes.Repeat([]byte{7}, 64<<10), 1<<20)
			if werr == nil {
				werr = im.Flush()
			}
			cerr := im.Close()
			if werr == nil {
				t.Fatalf("write over metadata succeeded (close: %v)", cerr)
			}
			if !errors.Is(werr, syscall.EIO) || !strings.Contains(werr.Error(), "overlaps with") {
				t.Fatalf("error = %v, want an EIO overlap error", werr)
			}
			// Nothing but the corrupt bit changed.
			after, err := os.ReadFile(img)
			if err != nil {
				t.Fatal(err)
			}
			if len(after) != len(before) {
				t.Fatalf("file size %d -> %d", len(before), len(after))
			}
			before[79] |= 2
			if !bytes.Equal(before, after) {
				t.Fatal("image bytes changed beyond the corrupt bit")
			}
			if out := run(t, "qemu-img", "info", img); !strings.Contains(out, "file format: qcow2") || !strings.Contains(out, "corrupt: true") {
				t.Fatalf("qemu-img info:\n%s", out)
			}
			run(t, "qemu-io", "-r", "-f", "qcow2", "-c", "read -P 1 0 200k", img)
			got := readAll(t, img)
			if !bytes.Equal(got[:200<<10], bytes.Repeat([]byte{1}, 200<<10)) {
				t.Fatal("guest data changed")
			}
			if _, err := block.Open(img, block.OpenOptions{}); err == nil || !strings.Contains(err.Error(), "corrupt") {
				t.Fatalf("read/write open of the marked image: %v", err)
			}
		})
	}
}

// TestOverlapCheckDataOverTables points an allocated, owned data cluster at
// the image's own L2 table or refcount block: the write would go in place
// over live metadata, so it must be refused and the image marked corrupt.
func TestOverlapCheckDataOverTables(t *testing.T) {
	be := binary.BigEndian
	read8 := func(f *os.File, off int64) uint64 {
		var b [8]byte
		if _, err := f.ReadAt(b[:], off); err != nil {
			t.Fatal(err)
		}
		return be.Uint64(b[:])
	}
	const copied = 1 << 63
	const offMask = 0x00fffffffffffe00
	for _, c := range []struct {
		name, want string
		target     func(f *os.File, h []byte) uint64
	}{
		{"data-on-own-l2", "active L2 table", func(f *os.File, h []byte) uint64 {
			return read8(f, int64(be.Uint64(h[40:]))) & offMask
		}},
		{"data-on-refblock", "refcount block", func(f *os.File, h []byte) uint64 {
			return read8(f, int64(be.Uint64(h[48:]))) & offMask
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			img := overlapImage(t, func(f *os.File, h []byte) {
				l2 := int64(read8(f, int64(be.Uint64(h[40:]))) & offMask)
				var e [8]byte
				be.PutUint64(e[:], copied|c.target(f, h))
				if _, err := f.WriteAt(e[:], l2); err != nil {
					t.Fatal(err)
				}
			})
			before, err := os.ReadFile(img)
			if err != nil {
				t.Fatal(err)
			}
			im, err := block.Open(img, block.OpenOptions{})
			if err != nil {
				t.Fatal(err)
			}
			_, werr := im.WriteAt(bytes.Repeat([]byte{7}, 4096), 0)
			im.Close()
			if !errors.Is(werr, syscall.EIO) || !strings.Contains(werr.Error(), "overlaps with "+c.want) {
				t.Fatalf("error = %v, want an EIO overlap error naming the %s", werr, c.want)
			}
			after, err := os.ReadFile(img)
			if err != nil {
				t.Fatal(err)
			}
			before[79] |= 2
			if !bytes.Equal(before, after) {
				t.Fatal("image bytes changed beyond the corrupt bit")
			}
		})
	}
}
