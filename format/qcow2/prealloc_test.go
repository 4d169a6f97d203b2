package qcow2_test

import (
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"vdisk/block"
)

// Preallocated images span several L2 tables and refcount blocks: the
// metadata allocated between data runs must survive preallocation
// (preallocation=full once zeroed it), and later writes must keep the
// image consistent.
func TestPreallocationManyTables(t *testing.T) {
	cases := []struct {
		cs     int64
		mode   string
		size   int64
		writes bool
	}{
		{512, "metadata", 2 << 20, true},
		{512, "falloc", 1 << 20, true},
		{512, "full", 1 << 20, true},
		{4096, "metadata", 64 << 20, true},
		{4096, "falloc", 16 << 20, true},
		{4096, "full", 16 << 20, true},
		{65536, "metadata", 2200 << 20, false},
		{65536, "falloc", 600 << 20, false},
	}
	for _, c := range cases {
		t.Run(fmt.Sprintf("%s-%d", c.mode, c.cs), func(t *testing.T) {
			dir := t.TempDir()
			name := filepath.Join(dir, "p.qcow2")
			vdiskCreate(t, name, fmt.Sprintf("cluster_size=%d,preallocation=%s", c.cs, c.mode), c.size)
			qemuCheck(t, name)
			qm, vm := qemuMap(t, name), vdiskMap(t, name)
			if !reflect.DeepEqual(qm, vm) {
				t.Fatalf("map differs\nqemu:  %v\nvdisk: %v", qm, vm)
			}
			// Every guest cluster is mapped to data.
			var mapped int64
			for _, e := range qm {
				if e["data"] == true {
					mapped += int64(e["length"].(float64))
				}
			}
			if mapped != c.size {
				t.Fatalf("%d of %d bytes preallocated", mapped, c.size)
			}
			if !c.writes {
				return
			}
			rawName := filepath.Join(dir, "m.raw")
			raw, err := os.Create(rawName)
			if err != nil {
				t.Fatal(err)
			}
			defer raw.Close()
			if err := raw.Truncate(c.size); err != nil {
				t.Fatal(err)
			}
			img, err := block.Open(name, block.OpenOptions{})
			if err != nil {
				t.Fatal(err)
			}
			rng := rand.New(rand.NewSource(c.cs + c.size))
			for i := 0; i < 60; i++ {
				n := rng.Int63n(3*c.cs) + 1
				off := rng.Int63n(c.size - n)
				p := make([]byte, n)
				rng.Read(p)
				if _, err := img.WriteAt(p, off); err != nil {
					t.Fatal(err)
				}
				if _, err := raw.WriteAt(p, off); err != nil {
					t.Fatal(err)
				}
			}
			if err := img.Close(); err != nil {
				t.Fatal(err)
			}
			qemuCheck(t, name)
			run(t, "qemu-img", "compare", "-f", "qcow2", "-F", "raw", name, rawName)
		})
	}
}
