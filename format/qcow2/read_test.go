package qcow2_test

import (
	"fmt"
	"path/filepath"
	"testing"
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
	// Without a backing format extension the format is probed.
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
