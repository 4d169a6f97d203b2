package vhd

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"vdisk/block"
)

// makeVHD creates a VHD file with create's options given as strings.
func makeVHD(t *testing.T, file string, opts map[string]string) {
	t.Helper()
	var pairs [][2]string
	for k, v := range opts {
		pairs = append(pairs, [2]string{k, v})
	}
	o, err := block.ParseOptions(Format.CreateOptions, pairs)
	if err != nil {
		t.Fatal(err)
	}
	if err := block.Create(file, "vhd", o); err != nil {
		t.Fatal(err)
	}
}

// writeVHD writes p at the start of the disk in file.
func writeVHD(t *testing.T, file string, p []byte) {
	t.Helper()
	img, err := block.Open(file, block.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	if _, err := img.WriteAt(p, 0); err != nil {
		t.Fatal(err)
	}
}

// parentByte fills the first 4 KiB of parentPair's base.
const parentByte = 0x5B

// parentPair makes dir/base.vhd with a pattern at 0 and dir/child.vhd of
// it, and returns the names.
func parentPair(t *testing.T, dir string) (string, string) {
	base, child := filepath.Join(dir, "base.vhd"), filepath.Join(dir, "child.vhd")
	makeVHD(t, base, map[string]string{"size": "1M", "block_size": "64K"})
	writeVHD(t, base, bytes.Repeat([]byte{parentByte}, 4096))
	makeVHD(t, child, map[string]string{"backing_file": "base.vhd"})
	return base, child
}

// openChild opens a child and reports which locator found its parent,
// after checking that the parent's data shows through.
func openChild(t *testing.T, name string) string {
	t.Helper()
	img, err := block.Open(name, block.OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	buf := make([]byte, 4096)
	if _, err := img.ReadAt(buf, 0); err != nil || !bytes.Equal(buf, bytes.Repeat([]byte{parentByte}, 4096)) {
		t.Fatalf("the parent's data does not show through (%v)", err)
	}
	return img.(*Image).parentFrom
}

// clearLocators zeroes the codes of the locators of the given platforms,
// keeping the header checksum right.
func clearLocators(t *testing.T, file string, codes ...string) {
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	h := b[footerSize : footerSize+headerSize]
	for i := 0; i < 8; i++ {
		e := h[576+24*i:]
		for _, c := range codes {
			if string(e[:4]) == c {
				copy(e[:4], []byte{0, 0, 0, 0})
			}
		}
	}
	rewriteHeader(t, file, b)
}

func rewriteHeader(t *testing.T, file string, b []byte) {
	h := b[footerSize : footerSize+headerSize]
	binary.BigEndian.PutUint32(h[36:], checksum(h, 36))
	if err := os.WriteFile(file, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// rewriteFooter changes the footer and, where there is one, its copy.
func rewriteFooter(t *testing.T, file string, change func(*Footer)) {
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	ft, err := parseFooter(b[len(b)-footerSize:])
	if err != nil {
		t.Fatal(err)
	}
	change(ft)
	fb := ft.marshal()
	if string(b[:8]) == footerCookie {
		copy(b, fb)
	}
	copy(b[len(b)-footerSize:], fb)
	if err := os.WriteFile(file, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestParentAbsoluteFallback: when the child moves away from its parent,
// the relative locator fails and the absolute one (W2ku) finds it.
func TestParentAbsoluteFallback(t *testing.T) {
	dir := t.TempDir()
	_, child := parentPair(t, dir)
	if got := openChild(t, child); got != "W2ru locator" {
		t.Fatalf("in place: parent found by %q", got)
	}
	moved := filepath.Join(dir, "elsewhere", "child.vhd")
	os.Mkdir(filepath.Dir(moved), 0o755)
	if err := os.Rename(child, moved); err != nil {
		t.Fatal(err)
	}
	if got := openChild(t, moved); got != "W2ku locator" {
		t.Fatalf("moved child: parent found by %q, want the W2ku locator", got)
	}
	// Opened without its chain (as info does), it still names the parent
	// that locator finds.
	img, err := block.Open(moved, block.OpenOptions{ReadOnly: true, NoBacking: true})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	info, err := img.Info()
	if err != nil {
		t.Fatal(err)
	}
	base, _ := filepath.Abs(filepath.Join(dir, "base.vhd"))
	if info.BackingFilename != base || info.FullBackingFilename != base || info.BackingFormat != "vhd" || img.Backing() != nil {
		t.Fatalf("info without the chain: backing %q (%q, %q)", info.BackingFilename, info.FullBackingFilename, info.BackingFormat)
	}
}

// TestParentMacX: with only the MacX locator (a file URL, percent-encoded)
// left, and the child moved so that the parent name does not help either,
// the parent is found through it.
func TestParentMacX(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "my disks")
	os.Mkdir(dir, 0o755)
	_, child := parentPair(t, dir)
	clearLocators(t, child, platW2ru, platW2ku)
	moved := filepath.Join(filepath.Dir(dir), "child.vhd")
	if err := os.Rename(child, moved); err != nil {
		t.Fatal(err)
	}
	if got := openChild(t, moved); got != "MacX locator" {
		t.Fatalf("parent found by %q, want the MacX locator", got)
	}
	// Without MacX too, nothing finds it, and the error says what was tried.
	clearLocators(t, moved, platMacX)
	_, err := block.Open(moved, block.OpenOptions{ReadOnly: true})
	if err == nil || !strings.Contains(err.Error(), "parent not found; tried parent name") {
		t.Fatalf("no locator: %v", err)
	}
}

// TestParentMismatch: a parent whose time stamp or unique id differs from
// what the child recorded is refused with both files named.
func TestParentMismatch(t *testing.T) {
	for _, c := range []struct {
		what   string
		change func(*Footer)
	}{
		{"time stamp", func(f *Footer) { f.Timestamp++ }},
		{"unique id", func(f *Footer) { f.UniqueID[3] ^= 1 }},
	} {
		base, child := parentPair(t, t.TempDir())
		rewriteFooter(t, base, c.change)
		_, err := block.Open(child, block.OpenOptions{ReadOnly: true})
		if err == nil || !strings.Contains(err.Error(), c.what) || !strings.Contains(err.Error(), child) || !strings.Contains(err.Error(), base) {
			t.Fatalf("%s differs: %v, want an error naming it and both files", c.what, err)
		}
	}
}

// TestParentDepthLimit builds a chain one image longer than opens allow:
// it is refused with a message about its depth, while the chain one
// shorter opens.
func TestParentDepthLimit(t *testing.T) {
	dir := t.TempDir()
	name := func(i int) string { return filepath.Join(dir, fmt.Sprintf("img%d.vhd", i)) }
	if err := os.WriteFile(name(0), handImage(t, typeDynamic, 64<<10, 4096, nil, nil), 0o644); err != nil {
		t.Fatal(err)
	}
	// Image n is the top of a chain of n+1 images.
	top := block.MaxBackingDepth + 1
	for i := 1; i <= top; i++ {
		b, err := os.ReadFile(name(i - 1))
		if err != nil {
			t.Fatal(err)
		}
		pf, err := parseFooter(b[len(b)-footerSize:])
		if err != nil {
			t.Fatal(err)
		}
		loc := []locatorData{{platW2ru, encodeUTF16(filepath.Base(name(i-1)), leUTF16)}}
		if err := os.WriteFile(name(i), handImage(t, typeDifferencing, 64<<10, 4096, loc, pf), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	img, err := block.Open(name(top-1), block.OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatalf("chain of %d images: %v", top, err)
	}
	img.Close()
	_, err = block.Open(name(top), block.OpenOptions{ReadOnly: true})
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("deeper than %d", block.MaxBackingDepth)) {
		t.Fatalf("chain of %d images: %v, want a refusal for its depth", top+1, err)
	}
	if strings.Count(err.Error(), "deeper") != 1 {
		t.Fatalf("the depth error repeats: %v", err)
	}
}

// TestOpenRefusesBadFooterFields: a footer (and its copy) with a version
// or disk type vdisk does not know is refused with a message naming the
// field, for fixed and dynamic disks.
func TestOpenRefusesBadFooterFields(t *testing.T) {
	dir := t.TempDir()
	for _, sub := range []string{"fixed", "dynamic"} {
		for _, c := range []struct {
			want   string
			change func(*Footer)
		}{
			{"file format version 0x00020000 is not 1.x", func(f *Footer) { f.Version = 0x00020000 }},
			{"file format version 0x", func(f *Footer) { f.Version = 0 }},
			{"disk type 5 is not fixed (2), dynamic (3) or differencing (4)", func(f *Footer) { f.DiskType = 5 }},
			{"disk type 1 is not", func(f *Footer) { f.DiskType = 1 }},
			{"disk type 0 is not", func(f *Footer) { f.DiskType = 0 }},
		} {
			file := filepath.Join(dir, sub+".vhd")
			os.Remove(file)
			makeVHD(t, file, map[string]string{"size": "1M", "subformat": sub})
			rewriteFooter(t, file, c.change)
			for _, o := range []block.OpenOptions{{}, {ReadOnly: true}, {Format: "vhd"}} {
				img, err := block.Open(file, o)
				if err == nil {
					info, _ := img.Info()
					img.Close()
					// A fixed disk is probed by its footer's type, so one
					// that no longer says fixed is a raw image, as in QEMU.
					if sub == "fixed" && strings.HasPrefix(c.want, "disk type") && o.Format == "" && info.Format == "raw" {
						continue
					}
				}
				if err == nil || !strings.Contains(err.Error(), "footer: "+c.want) {
					t.Fatalf("%s, %+v: %v, want an error naming %q", sub, o, err, c.want)
				}
			}
		}
	}
}

// A differencing disk can be made while its parent is open for writing
// elsewhere: create only looks at the parent, without its locks, as
// qemu-img create does for a qcow2 overlay.
func TestCreateChildOfParentInUse(t *testing.T) {
	dir := t.TempDir()
	base, child := filepath.Join(dir, "base.vhd"), filepath.Join(dir, "child.vhd")
	makeVHD(t, base, map[string]string{"size": "1M"})
	w, err := block.Open(base, block.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	makeVHD(t, child, map[string]string{"backing_file": "base.vhd"})
	// The child is sound, and opening it (which locks its parent as a
	// reader) is refused while the parent is written, as it must be.
	c, err := block.Open(child, block.OpenOptions{ReadOnly: true, ForceShare: true})
	if err != nil {
		t.Fatal(err)
	}
	if c.Size() != w.Size() {
		t.Errorf("child size %d, parent's %d", c.Size(), w.Size())
	}
	c.Close()
	if c, err := block.Open(child, block.OpenOptions{ReadOnly: true}); err == nil {
		c.Close()
		t.Error("child opened with locks while its parent is written")
	}
}
