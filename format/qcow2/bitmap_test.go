package qcow2_test

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"vdisk/block"
)

// bitmapImage makes a 4 MiB image with two persistent bitmaps, one of
// which has a data cluster (written while QEMU tracked it).
func bitmapImage(t *testing.T) string {
	t.Helper()
	name := filepath.Join(t.TempDir(), "bm.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", name, "4M")
	run(t, "qemu-img", "bitmap", "--add", name, "b0")
	qemuIO(t, name, "qcow2", "write -P 1 0 64k")
	run(t, "qemu-img", "bitmap", "--add", "-g", "4096", name, "b1")
	return name
}

type qemuBitmap struct {
	Name        string   `json:"name"`
	Flags       []string `json:"flags"`
	Granularity int64    `json:"granularity"`
}

func qemuBitmaps(t *testing.T, name string) []qemuBitmap {
	t.Helper()
	var info struct {
		FormatSpecific struct {
			Data struct {
				Bitmaps []qemuBitmap `json:"bitmaps"`
			} `json:"data"`
		} `json:"format-specific"`
	}
	if err := json.Unmarshal([]byte(run(t, "qemu-img", "info", "-U", "--output", "json", name)), &info); err != nil {
		t.Fatal(err)
	}
	return info.FormatSpecific.Data.Bitmaps
}

func TestBitmapsStayReferenced(t *testing.T) {
	name := bitmapImage(t)
	before, _ := os.ReadFile(name)
	img, err := block.Open(name, block.OpenOptions{Format: "qcow2"})
	if err != nil {
		t.Fatal(err)
	}
	// Allocating writes over the whole disk: none may land on a bitmap
	// cluster (qemu-img check would then see a refcount mismatch).
	buf := bytes.Repeat([]byte{0xab}, 64<<10)
	for off := int64(0); off < img.Size(); off += 128 << 10 {
		if _, err := img.WriteAt(buf, off); err != nil {
			t.Fatal(err)
		}
	}
	if err := img.Discard(0, 256<<10); err != nil {
		t.Fatal(err)
	}
	if err := img.WriteZeroes(1<<20, 128<<10, block.ZeroMayUnmap); err != nil {
		t.Fatal(err)
	}
	if err := img.(block.Resizer).Resize(8<<20, false); err == nil || !strings.Contains(err.Error(), "persistent bitmaps") {
		t.Errorf("resize with bitmaps: got %v, want a refusal", err)
	}
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
	qemuCheck(t, name)
	bms := qemuBitmaps(t, name)
	if len(bms) != 2 {
		t.Fatalf("qemu-img info lists %d bitmaps, want 2: %+v", len(bms), bms)
	}
	for _, b := range bms {
		if len(b.Flags) == 0 || b.Flags[0] != "in-use" {
			t.Errorf("bitmap %s: flags %v, want in-use", b.Name, b.Flags)
		}
	}
	if bms[1].Granularity != 4096 {
		t.Errorf("bitmap b1 granularity %d", bms[1].Granularity)
	}
	after, _ := os.ReadFile(name)
	if bytes.Equal(before, after) {
		t.Fatal("image unchanged")
	}
	// A second writable open finds them in use already and changes
	// nothing of the directory.
	img, err = block.Open(name, block.OpenOptions{Format: "qcow2"})
	if err != nil {
		t.Fatal(err)
	}
	img.Close()
	qemuCheck(t, name)
	run(t, "qemu-img", "bitmap", "--remove", name, "b0")
	run(t, "qemu-img", "bitmap", "--remove", name, "b1")
	qemuCheck(t, name)
	if bms := qemuBitmaps(t, name); len(bms) != 0 {
		t.Errorf("bitmaps left after remove: %+v", bms)
	}
}

func TestBitmapsReadOnlyUnchanged(t *testing.T) {
	name := bitmapImage(t)
	before, _ := os.ReadFile(name)
	img, err := block.Open(name, block.OpenOptions{Format: "qcow2", ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	info, err := img.Info()
	if err != nil {
		t.Fatal(err)
	}
	img.Close()
	if after, _ := os.ReadFile(name); !bytes.Equal(before, after) {
		t.Error("read-only open changed the image")
	}
	j, _ := json.Marshal(info.FormatSpecific)
	if !strings.Contains(string(j), `"name":"b1"`) || strings.Contains(string(j), "in-use") {
		t.Errorf("info: %s", j)
	}
}

// bitmapsExt returns the file offset of the bitmaps extension's data.
func bitmapsExt(t *testing.T, b []byte) int {
	t.Helper()
	off := int(binary.BigEndian.Uint32(b[100:]))
	for off+8 <= len(b) {
		typ, n := binary.BigEndian.Uint32(b[off:]), int(binary.BigEndian.Uint32(b[off+4:]))
		if typ == 0 {
			break
		}
		if typ == 0x23852875 {
			return off + 8
		}
		off += 8 + (n+7)&^7
	}
	t.Fatal("no bitmaps extension")
	return 0
}

func TestBitmapsMalformedRefused(t *testing.T) {
	for _, tc := range []struct {
		name string
		mod  func(b []byte, ext int)
	}{
		{"reserved", func(b []byte, ext int) { b[ext+4] = 1 }},
		{"count", func(b []byte, ext int) { binary.BigEndian.PutUint32(b[ext:], 3) }},
		{"diroffset", func(b []byte, ext int) { binary.BigEndian.PutUint64(b[ext+16:], 0x10200) }},
		{"dirsize", func(b []byte, ext int) { binary.BigEndian.PutUint64(b[ext+8:], 1<<30) }},
		{"beyond-eof", func(b []byte, ext int) { binary.BigEndian.PutUint64(b[ext+16:], 1<<40) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			name := bitmapImage(t)
			b, _ := os.ReadFile(name)
			tc.mod(b, bitmapsExt(t, b))
			if err := os.WriteFile(name, b, 0o644); err != nil {
				t.Fatal(err)
			}
			img, err := block.Open(name, block.OpenOptions{Format: "qcow2"})
			if err == nil {
				img.Close()
				t.Fatal("writable open of a malformed bitmaps extension succeeded")
			}
			if !strings.Contains(err.Error(), "bitmap") {
				t.Errorf("error %q does not name the bitmaps", err)
			}
			img, err = block.Open(name, block.OpenOptions{Format: "qcow2", ReadOnly: true})
			if err != nil {
				t.Fatalf("read-only open: %v", err)
			}
			img.Close()
			if after, _ := os.ReadFile(name); !bytes.Equal(b, after) {
				t.Error("refused open changed the image")
			}
		})
	}
}

// A malformed entry in the directory itself (reserved flag bits).
func TestBitmapsBadEntryRefused(t *testing.T) {
	name := bitmapImage(t)
	b, _ := os.ReadFile(name)
	ext := bitmapsExt(t, b)
	dir := int(binary.BigEndian.Uint64(b[ext+16:]))
	b[dir+12] = 0x80
	if err := os.WriteFile(name, b, 0o644); err != nil {
		t.Fatal(err)
	}
	img, err := block.Open(name, block.OpenOptions{Format: "qcow2"})
	if err == nil {
		img.Close()
		t.Fatal("writable open succeeded")
	}
	if !strings.Contains(err.Error(), "reserved flags") {
		t.Errorf("error: %v", err)
	}
}

// With the bitmap directory's refcount wrongly zero, the allocator would
// hand its cluster out; the overlap check refuses to write over it.
func TestBitmapDirOverlap(t *testing.T) {
	name := bitmapImage(t)
	b, _ := os.ReadFile(name)
	dir := binary.BigEndian.Uint64(b[bitmapsExt(t, b)+16:])
	rt := binary.BigEndian.Uint64(b[48:])
	rb := binary.BigEndian.Uint64(b[rt:])
	binary.BigEndian.PutUint16(b[rb+2*(dir>>16):], 0)
	if err := os.WriteFile(name, b, 0o644); err != nil {
		t.Fatal(err)
	}
	img, err := block.Open(name, block.OpenOptions{Format: "qcow2"})
	if err != nil {
		t.Fatal(err)
	}
	var werr error
	for off := int64(1 << 20); off < 4<<20 && werr == nil; off += 64 << 10 {
		_, werr = img.WriteAt(make([]byte, 64<<10), off)
	}
	img.Close()
	if werr == nil || !strings.Contains(werr.Error(), "bitmap directory") {
		t.Fatalf("write: %v, want the overlap check to name the bitmap directory", werr)
	}
	// The two entries (32 bytes each: "b0" and "b1" padded) as they were,
	// but for the in-use flags.
	want := append([]byte(nil), b[dir:dir+64]...)
	want[15] |= 1
	want[32+15] |= 1
	after, _ := os.ReadFile(name)
	if !bytes.Equal(after[dir:dir+64], want) {
		t.Errorf("bitmap directory overwritten:\n% x\nwant\n% x", after[dir:dir+64], want)
	}
}

// A bitmap directory size the file cannot hold must not size a buffer:
// info and check read the header's claim against the file first.
func TestBitmapDirSizeBeyondFile(t *testing.T) {
	name := bitmapImage(t)
	b, _ := os.ReadFile(name)
	binary.BigEndian.PutUint64(b[bitmapsExt(t, b)+8:], 60<<20) // the file is well under 1 MiB
	if err := os.WriteFile(name, b, 0o644); err != nil {
		t.Fatal(err)
	}
	img, err := block.Open(name, block.OpenOptions{Format: "qcow2", ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	var info *block.Info
	var res *block.CheckResult
	if alloc := allocated(func() {
		if info, err = img.Info(); err != nil {
			t.Fatal(err)
		}
		if res, err = img.(block.Checker).Check(block.RepairNone); err != nil {
			t.Fatal(err)
		}
	}); alloc > 16<<20 {
		t.Errorf("info and check allocated %d bytes", alloc)
	}
	if j, _ := json.Marshal(info.FormatSpecific); strings.Contains(string(j), "bitmaps") {
		t.Errorf("info lists bitmaps of a damaged directory: %s", j)
	}
	if res.Corruptions == 0 {
		t.Errorf("check finds nothing wrong: %+v", res)
	}
}

// allocated returns how many bytes fn allocates on the heap.
func allocated(fn func()) uint64 {
	var a, b runtime.MemStats
	runtime.ReadMemStats(&a)
	fn()
	runtime.ReadMemStats(&b)
	return b.TotalAlloc - a.TotalAlloc
}
