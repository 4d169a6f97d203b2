package qcow2_test

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

// The pattern every read test image gets: data, zeroes, partial clusters,
// discards, scattered writes across L2 tables.
var patternCmds = []string{
	"write -P 0x11 0 64k",
	"write -P 0x22 100k 7k",
	"write -P 0x33 1M 1M",
	"write -z 1200k 100k",
	"discard 1500k 64k",
	"write -P 0x44 3M 512",
	"write -P 0x55 5000k 4k",
}

func TestReadMatrix(t *testing.T) {
	dir := t.TempDir()
	cases := []string{
		"cluster_size=512", "cluster_size=4k", "cluster_size=64k", "cluster_size=2M",
		"compat=0.10", "compat=0.10,cluster_size=4k",
		"refcount_bits=1", "refcount_bits=64", "refcount_bits=1,cluster_size=512", "refcount_bits=8",
		"lazy_refcounts=on",
		"extended_l2=on", "extended_l2=on,cluster_size=16k", "extended_l2=on,cluster_size=2M",
		"preallocation=metadata", "preallocation=metadata,cluster_size=4k",
	}
	if raceEnabled {
		cases = cases[:6]
	}
	for i, o := range cases {
		t.Run(o, func(t *testing.T) {
			name := filepath.Join(dir, fmt.Sprintf("m%d.qcow2", i))
			run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", o, name, "6M")
			qemuIO(t, name, "qcow2", patternCmds...)
			compareWithQemu(t, name)
		})
	}
}

func TestReadCompressed(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src.raw")
	run(t, "qemu-img", "create", "-q", "-f", "raw", src, "6M")
	qemuIO(t, src, "raw", "write -P 0x11 0 64k", "write -P 0x33 1M 1M", "write -P 0x55 5000k 4k")
	// Mixed content so the clusters do not all compress the same.
	run(t, "dd", "if=/dev/urandom", "of="+src, "bs=4k", "count=3", "seek=700", "conv=notrunc", "status=none")
	for _, o := range []string{"compression_type=zlib", "compression_type=zstd", "compression_type=zlib,cluster_size=4k", "compression_type=zstd,cluster_size=2M", "compat=0.10"} {
		t.Run(o, func(t *testing.T) {
			name := filepath.Join(dir, "c.qcow2")
			run(t, "qemu-img", "convert", "-c", "-O", "qcow2", "-o", o, src, name)
			compareWithQemu(t, name)
			// Partially overwritten compressed clusters.
			qemuIO(t, name, "qcow2", "write -P 0x66 1030k 4k")
			compareWithQemu(t, name)
		})
	}
}

func TestReadBackingChain(t *testing.T) {
	dir := t.TempDir()
	base := filepath.Join(dir, "base.raw")
	mid := filepath.Join(dir, "mid.qcow2")
	top := filepath.Join(dir, "top.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "raw", base, "4M")
	qemuIO(t, base, "raw", "write -P 0x01 0 4M")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw", mid, "6M")
	qemuIO(t, mid, "qcow2", "write -P 0x02 64k 64k", "write -z 256k 128k", "write -P 0x03 4M 1M")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=4k", "-b", "mid.qcow2", "-F", "qcow2", top)
	qemuIO(t, top, "qcow2", "write -P 0x04 100k 8k", "discard 0 64k", "write -P 0x05 5M 3k")
	compareWithQemu(t, top)
	compareWithQemu(t, mid)
	top2 := filepath.Join(dir, "top2.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "extended_l2=on", "-b", "mid.qcow2", "-F", "qcow2", top2)
	qemuIO(t, top2, "qcow2", "write -P 0x06 70k 2k", "write -z 200k 4k")
	compareWithQemu(t, top2)
}

func TestReadSnapshots(t *testing.T) {
	dir := t.TempDir()
	name := filepath.Join(dir, "s.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", name, "4M")
	qemuIO(t, name, "qcow2", "write -P 1 0 1M")
	run(t, "qemu-img", "snapshot", "-c", "one", name)
	qemuIO(t, name, "qcow2", "write -P 2 512k 1M")
	run(t, "qemu-img", "snapshot", "-c", "two", name)
	qemuIO(t, name, "qcow2", "write -P 3 0 64k", "discard 1M 64k")
	compareWithQemu(t, name)
}

// Backing files of another format, named with a format other than the one
// probing would find, or with no format at all (probed): vdisk reads what
// qemu-img reads.
func TestReadBackingFormats(t *testing.T) {
	dir := t.TempDir()
	at := func(n string) string { return filepath.Join(dir, n) }
	// A dynamic VHD made by qemu-img, under qcow2.
	run(t, "qemu-img", "create", "-q", "-f", "vpc", at("base.vhd"), "4M")
	qemuIO(t, at("base.vhd"), "vpc", "write -P 0x11 0 1M", "write -P 0x12 2M 100k")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.vhd", "-F", "vpc", at("on-vhd.qcow2"))
	qemuIO(t, at("on-vhd.qcow2"), "qcow2", "write -P 0x13 512k 64k", "write -z 2M 4k")
	compareWithQemu(t, at("on-vhd.qcow2"))

	// A qcow2 file named as raw: its bytes are the data, header and all.
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", at("base.qcow2"), "1M")
	qemuIO(t, at("base.qcow2"), "qcow2", "write -P 0x21 0 64k")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "raw", at("as-raw.qcow2"), "1M")
	qemuIO(t, at("as-raw.qcow2"), "qcow2", "write -P 0x22 128k 4k")
	compareWithQemu(t, at("as-raw.qcow2"))
	if got := readAll(t, at("as-raw.qcow2")); string(got[:4]) != "QFI\xfb" {
		t.Errorf("the qcow2 base named raw does not read as its bytes: %x", got[:4])
	}

	// No backing format extension: the base is probed (qcow2, VHD, raw).
	run(t, "qemu-img", "create", "-q", "-f", "raw", at("base.raw"), "1M")
	qemuIO(t, at("base.raw"), "raw", "write -P 0x31 0 1M")
	for _, b := range []struct{ name, fmt string }{{"base.qcow2", "qcow2"}, {"base.vhd", "vpc"}, {"base.raw", "raw"}} {
		top := at("probed-" + b.fmt + ".qcow2")
		run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", b.name, "-F", b.fmt, top)
		dropBackingFormat(t, top)
		if out := run(t, "qemu-img", "info", top); strings.Contains(out, "backing file format") {
			t.Fatalf("%s still names its backing format:\n%s", top, out)
		}
		qemuIO(t, top, "qcow2", "write -P 0x41 64k 4k")
		compareWithQemu(t, top)
	}
}

// dropBackingFormat turns an image's backing format extension into one of
// an unknown type, which both QEMU and vdisk skip.
func dropBackingFormat(t *testing.T, name string) {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	off := 72
	if binary.BigEndian.Uint32(b[4:]) >= 3 {
		off = int(binary.BigEndian.Uint32(b[100:]))
	}
	for off+8 <= len(b) {
		typ, n := binary.BigEndian.Uint32(b[off:]), int(binary.BigEndian.Uint32(b[off+4:]))
		if typ == 0 {
			break
		}
		if typ == 0xe2792aca {
			binary.BigEndian.PutUint32(b[off:], 0x7664736b)
			if err := os.WriteFile(name, b, 0o644); err != nil {
				t.Fatal(err)
			}
			return
		}
		off += 8 + (n+7)&^7
	}
	t.Fatalf("%s has no backing format extension", name)
}

// A chain as deep as block.MaxBackingDepth opens (as qemu-io opens it);
// one layer more is refused with an error that says why.
func TestBackingChainDepthLimit(t *testing.T) {
	dir := t.TempDir()
	layer := func(i int) string { return filepath.Join(dir, fmt.Sprintf("l%04d.qcow2", i)) }
	vdiskCreate(t, layer(0), "cluster_size=512", 64<<10)
	qemuIO(t, layer(0), "qcow2", "write -P 0x5a 0 64k")
	vdiskCreate(t, layer(1), "cluster_size=512,backing_file=l0000.qcow2,backing_fmt=qcow2", -1)
	// The other layers are copies of the first with the backing file
	// name changed (same length): creating each through the chain would
	// open every layer below it.
	tmpl, err := os.ReadFile(layer(1))
	if err != nil {
		t.Fatal(err)
	}
	for i := 2; i <= block.MaxBackingDepth+1; i++ {
		b := bytes.Replace(tmpl, []byte("l0000.qcow2"), []byte(fmt.Sprintf("l%04d.qcow2", i-1)), 1)
		if err := os.WriteFile(layer(i), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	deepest := layer(block.MaxBackingDepth)
	qemuIO(t, deepest, "qcow2", "read -P 0x5a 0 64k")
	img, err := block.Open(deepest, block.OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatalf("a chain of %d backing files: %v", block.MaxBackingDepth, err)
	}
	buf := make([]byte, 64<<10)
	if _, err := img.ReadAt(buf, 0); err != nil || !bytes.Equal(buf, bytes.Repeat([]byte{0x5a}, len(buf))) {
		t.Errorf("reading through the chain: %v", err)
	}
	img.Close()
	_, err = block.Open(layer(block.MaxBackingDepth+1), block.OpenOptions{ReadOnly: true})
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("backing chain deeper than %d images", block.MaxBackingDepth)) {
		t.Fatalf("a chain one deeper than the limit: %v", err)
	}
}
