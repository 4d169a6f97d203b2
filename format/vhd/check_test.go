package vhd_test

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"vdisk/block"
)

func openRW(t *testing.T, file string) block.Image {
	t.Helper()
	img, err := block.Open(file, block.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func check(t *testing.T, img block.Image, mode block.RepairMode) *block.CheckResult {
	t.Helper()
	res, err := img.(block.Checker).Check(mode)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// writeSome fills a few blocks and returns the content.
func writeSome(t *testing.T, file string) []byte {
	img := openRW(t, file)
	defer img.Close()
	want := make([]byte, img.Size())
	for i, off := range []int64{0, 300 << 10, 1 << 20} {
		p := bytes.Repeat([]byte{byte(i + 1)}, 70000)
		if _, err := img.WriteAt(p, off); err != nil {
			t.Fatal(err)
		}
		copy(want[off:], p)
	}
	return want
}

func patch(t *testing.T, file string, off int64, b []byte) {
	f, err := os.OpenFile(file, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if off < 0 {
		st, _ := f.Stat()
		off += st.Size()
	}
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

func TestCheckDamagedFooter(t *testing.T) {
	file := filepath.Join(t.TempDir(), "d.vhd")
	create(t, file, map[string]string{"size": "2M", "block_size": "64K"})
	want := writeSome(t, file)
	fresh := openRW(t, file)
	if res := check(t, fresh, block.RepairNone); res.Corruptions+res.Leaks != 0 {
		t.Fatalf("fresh image: %+v %v", res, res.Messages)
	}
	fresh.Close()
	patch(t, file, -512+64, []byte{0xde, 0xad}) // footer checksum
	img := openRW(t, file)
	if !img.ReadOnly() {
		t.Fatal("damaged footer: image not read-only")
	}
	if _, err := img.WriteAt([]byte{1}, 0); err == nil || !strings.Contains(err.Error(), "check -r all") {
		t.Fatalf("write to damaged image: %v", err)
	}
	if !bytes.Equal(readAll(t, img), want) {
		t.Fatal("damaged footer: content differs")
	}
	info, _ := img.Info()
	if _, ok := info.FormatSpecific.Data.Get("damage"); !ok {
		t.Fatal("info does not report the damage")
	}
	res := check(t, img, block.RepairAll)
	if res.Corruptions != 1 || res.CorruptionsFixed != 1 {
		t.Fatalf("repair: %+v %v", res, res.Messages)
	}
	img.Close()
	img = openRW(t, file)
	if img.ReadOnly() || !bytes.Equal(readAll(t, img), want) {
		t.Fatal("after repair: read-only or content differs")
	}
	if res := check(t, img, block.RepairNone); res.Corruptions+res.Leaks != 0 {
		t.Fatalf("after repair: %+v %v", res, res.Messages)
	}
	img.Close()
	run(t, "qemu-img", "compare", "-f", "vpc", "-F", "raw", file, writeRaw(t, want))
}

func writeRaw(t *testing.T, b []byte) string {
	name := filepath.Join(t.TempDir(), "want.raw")
	if err := os.WriteFile(name, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return name
}

func TestCheckLeakAndBadEntries(t *testing.T) {
	file := filepath.Join(t.TempDir(), "d.vhd")
	create(t, file, map[string]string{"size": "2M", "block_size": "64K"})
	want := writeSome(t, file)
	// An allocation interrupted after the footer moved: space leaked
	// before the footer.
	st, _ := os.Stat(file)
	foot := make([]byte, 512)
	f, _ := os.Open(file)
	f.ReadAt(foot, st.Size()-512)
	f.Close()
	patch(t, file, st.Size()-512+(64<<10)+512, foot)
	img := openRW(t, file)
	res := check(t, img, block.RepairNone)
	if res.Leaks != 1 || res.Corruptions != 0 {
		t.Fatalf("leak: %+v %v", res, res.Messages)
	}
	res = check(t, img, block.RepairAll)
	if res.LeaksFixed != 1 {
		t.Fatalf("leak repair: %+v %v", res, res.Messages)
	}
	img.Close()
	if st2, _ := os.Stat(file); st2.Size() != st.Size() {
		t.Fatalf("after leak repair the file is %d bytes, want %d", st2.Size(), st.Size())
	}

	// BAT entry 5 past the end, entry 6 overlapping entry 0.
	var e0 [4]byte
	f, _ = os.Open(file)
	f.ReadAt(e0[:], 1536)
	f.Close()
	patch(t, file, 1536+4*5, binary.BigEndian.AppendUint32(nil, 0x7fffff))
	patch(t, file, 1536+4*6, binary.BigEndian.AppendUint32(nil, binary.BigEndian.Uint32(e0[:])+1))
	img = openRW(t, file)
	if !img.ReadOnly() {
		t.Fatal("bad BAT: image not read-only")
	}
	buf := make([]byte, 512)
	if _, err := img.ReadAt(buf, 5*64<<10); err == nil || !strings.Contains(err.Error(), "BAT entry 5") {
		t.Fatalf("read of a bad entry: %v", err)
	}
	// Entry 6 overlaps the blocks of entries 0 and 1; all four go.
	res = check(t, img, block.RepairAll)
	if res.Corruptions != 4 || res.CorruptionsFixed != 4 {
		t.Fatalf("bad entries: %+v %v", res, res.Messages)
	}
	img.Close()
	img = openRW(t, file)
	defer img.Close()
	got := readAll(t, img)
	for _, b := range []int{0, 1, 5, 6} {
		clear(want[b<<16 : (b+1)<<16])
	}
	if !bytes.Equal(got, want) {
		t.Fatal("after repair: content differs")
	}
}

func TestOpenRefusesBadFields(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		off  int64
		b    []byte
		want string
	}{
		{512 + 36, []byte{0, 0}, ""}, // header checksum: opens damaged
		{512, []byte("xxsparse"), "cookie"},
		{512 + 32, []byte{0, 0, 3, 0}, "block size"},
		{512 + 24, []byte{0, 2}, "version"},
		{512 + 28, []byte{0, 0, 0, 1}, "max table entries"},
		{512 + 16, []byte{0, 0, 0, 0, 0x10, 0, 0, 0}, "BAT"},
	} {
		file := filepath.Join(dir, "b.vhd")
		os.Remove(file)
		create(t, file, map[string]string{"size": "2M", "block_size": "64K"})
		patch(t, file, c.off, c.b)
		// Keep the header checksum right for the field tests.
		if c.want != "" {
			fixHeaderChecksum(t, file)
		}
		img, err := block.Open(file, block.OpenOptions{})
		if c.want == "" {
			if err != nil {
				t.Fatalf("header checksum: %v", err)
			}
			if !img.ReadOnly() {
				t.Fatal("header checksum: not read-only")
			}
			res := check(t, img, block.RepairAll)
			if res.CorruptionsFixed != 1 {
				t.Fatalf("header checksum repair: %+v", res)
			}
			img.Close()
			continue
		}
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Fatalf("patch at %d: error %v, want one naming %q", c.off, err, c.want)
		}
	}
}

func fixHeaderChecksum(t *testing.T, file string) {
	b := make([]byte, 1024)
	f, _ := os.Open(file)
	f.ReadAt(b, 512)
	f.Close()
	var s uint32
	for i, c := range b {
		if i < 36 || i >= 40 {
			s += uint32(c)
		}
	}
	patch(t, file, 512+36, binary.BigEndian.AppendUint32(nil, ^s))
}

// Zeroing with unmap (what a discard through an attached device asks
// for) punches the data of allocated dynamic blocks out of the file: the
// range reads as zeros, the file occupies less, and the image checks
// clean.
func TestWriteZeroesUnmapPunches(t *testing.T) {
	file := filepath.Join(t.TempDir(), "d.vhd")
	create(t, file, map[string]string{"size": "8M", "block_size": "2M"})
	img := openRW(t, file)
	defer img.Close()
	data := bytes.Repeat([]byte{0x5a}, 6<<20)
	if _, err := img.WriteAt(data, 0); err != nil {
		t.Fatal(err)
	}
	if err := img.Flush(); err != nil {
		t.Fatal(err)
	}
	before := allocated(t, file)
	// Half a block at an unaligned start, then two whole blocks.
	if err := img.WriteZeroes(1<<20+512, 5<<20-512, block.ZeroMayUnmap); err != nil {
		t.Fatal(err)
	}
	if err := img.Flush(); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 8<<20)
	if _, err := img.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	want := make([]byte, 8<<20)
	copy(want, data[:1<<20+512])
	if !bytes.Equal(got, want) {
		t.Error("zeroed range does not read as zeros, or data around it changed")
	}
	if after := allocated(t, file); after > before-(4<<20) {
		t.Errorf("file occupies %d bytes after zeroing 5 MiB, %d before", after, before)
	}
	if res := check(t, img, block.RepairNone); res.Corruptions != 0 || res.Leaks != 0 {
		t.Errorf("check: %+v %v", res, res.Messages)
	}
}

func allocated(t *testing.T, file string) int64 {
	t.Helper()
	st, err := os.Stat(file)
	if err != nil {
		t.Fatal(err)
	}
	return st.Sys().(*syscall.Stat_t).Blocks * 512
}
