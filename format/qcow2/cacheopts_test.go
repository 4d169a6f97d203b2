package qcow2_test

import (
	"bytes"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"vdisk/block"
	"vdisk/format/qcow2"
)

// The cache size options reach the driver: tiny caches are raised to the
// minimum, sizes are counted in clusters, and a 4-table cache over an
// image of 32 L2 tables still reads and writes correctly.
func TestCacheSizeOptions(t *testing.T) {
	name := filepath.Join(t.TempDir(), "c.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=4k", name, "64M")
	for _, tc := range []struct {
		l2, rb         int64
		wantL2, wantRB int
	}{
		{0, 0, int(qcow2.DefaultL2CacheBytes / 4096), int(qcow2.DefaultRefcountCacheBytes / 4096)},
		{1, 1, 4, 4},
		{40 << 10, 20 << 10, 10, 5},
	} {
		img, err := block.Open(name, block.OpenOptions{Format: "qcow2", L2CacheSize: tc.l2, RefcountCacheSize: tc.rb})
		if err != nil {
			t.Fatal(err)
		}
		l2, rb := qcow2.CacheEntries(img.(*qcow2.Image))
		img.Close()
		if l2 != tc.wantL2 || rb != tc.wantRB {
			t.Errorf("l2-cache-size %d refcount-cache-size %d: %d and %d tables, want %d and %d", tc.l2, tc.rb, l2, rb, tc.wantL2, tc.wantRB)
		}
	}
	for _, o := range []block.OpenOptions{{L2CacheSize: -1}, {RefcountCacheSize: 2 << 40}} {
		o.Format = "qcow2"
		img, err := block.Open(name, o)
		if err == nil {
			img.Close()
			t.Errorf("%+v: open succeeded", o)
		} else if !strings.Contains(err.Error(), "cache-size") {
			t.Errorf("%+v: error %v", o, err)
		}
	}

	img, err := block.Open(name, block.OpenOptions{Format: "qcow2", L2CacheSize: 1, RefcountCacheSize: 1})
	if err != nil {
		t.Fatal(err)
	}
	// With every other table dirty, a table just loaded must not be
	// evicted before its change lands (lost writes, found by this test).
	// Strided writes touch every L2 table and refcount block in turn, so
	// each evicts tables that must have been written back.
	var cmds []string
	for i := int64(0); i < 64; i++ {
		off := (i*37%64)<<20 + i*4096
		p := bytes.Repeat([]byte{byte(i + 1)}, 8192)
		if _, err := img.WriteAt(p, off); err != nil {
			t.Fatal(err)
		}
		cmds = append(cmds, fmt.Sprintf("read -P %d %d 8k", i+1, off))
	}
	for i := int64(0); i < 64; i++ {
		off := (i*37%64)<<20 + i*4096
		p := make([]byte, 8192)
		if _, err := img.ReadAt(p, off); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(p, bytes.Repeat([]byte{byte(i + 1)}, 8192)) {
			t.Fatalf("read back at %d differs", off)
		}
	}
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
	qemuCheck(t, name)
	qemuIO(t, name, "qcow2", cmds...)
}
