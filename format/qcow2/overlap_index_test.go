package qcow2

import (
	"fmt"
	"maps"
	"math/rand"
	"testing"

	"vdisk/block"
)

// BenchmarkMetaOverlap is the overlap check that every in-place data write
// pays, on a 1 TiB image with 64 KiB clusters whose L2 tables all exist
// (2048 L1 entries, 8 refcount blocks): the worst case for a table scan.
func BenchmarkMetaOverlap(b *testing.B) {
	img := &Image{cs: 64 << 10, cbits: 16, h: &header{l1Offset: 3 << 16, reftableOffset: 1 << 16, reftableClusters: 1}}
	img.l1 = make([]uint64, 2048)
	for i := range img.l1 {
		img.l1[i] = uint64(100+i)<<16 | flagCopied
	}
	img.reftable = make([]uint64, 8192)
	for i := range 8 {
		img.reftable[i] = uint64(4+i) << 16
	}
	for b.Loop() {
		if img.metaOverlap(1<<30, img.cs, olAll) != "" {
			b.Fatal("overlap")
		}
	}
}

// TestTableIndexFollowsTables runs every operation that changes the L1 or
// refcount table and checks after each that the overlap check's index, if
// built, still matches the tables: a stale index would miss new tables or,
// worse, take a reused cluster for one and mark a healthy image corrupt.
func TestTableIndexFollowsTables(t *testing.T) {
	f := &memFile{}
	pairs := [][2]string{{"size", "4M"}, {"cluster_size", "512"}, {"refcount_bits", "64"}}
	opts, err := block.ParseOptions(Format.CreateOptions, pairs)
	if err != nil {
		t.Fatal(err)
	}
	if err := create(f, opts); err != nil {
		t.Fatal(err)
	}
	bi, err := Open(f, &block.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	img := bi.(*Image)
	defer img.Close()
	rng := rand.New(rand.NewSource(1))
	buf := make([]byte, 8192)
	verify := func(op string) {
		t.Helper()
		cached := img.tables.Load()
		if cached == nil {
			img.mu.RLock()
			img.tableIndex() // build it, so the next operation must drop it
			img.mu.RUnlock()
			return
		}
		img.tables.Store(nil)
		img.mu.RLock()
		fresh := img.tableIndex()
		img.mu.RUnlock()
		if !maps.Equal(cached.kind, fresh.kind) {
			t.Fatalf("after %s the overlap index is stale", op)
		}
	}
	for i := 0; i < 400; i++ {
		off := rng.Int63n(img.Size()-int64(len(buf))) &^ 511
		var op string
		var err error
		switch r := rng.Intn(20); {
		case r < 10:
			op = "write"
			_, err = img.WriteAt(buf[:rng.Intn(len(buf))+1], off)
		case r < 13:
			op = "discard"
			err = img.Discard(off, int64(rng.Intn(len(buf))+1))
		case r < 14:
			op = "write-zeroes"
			err = img.WriteZeroes(off, int64(rng.Intn(len(buf))+1), block.ZeroMayUnmap)
		case r < 15:
			op = "snapshot create"
			err = img.SnapshotCreate(fmt.Sprint("s", i))
		case r < 16 && len(img.snapshots) > 0:
			op = "snapshot apply"
			err = img.SnapshotApply(img.snapshots[rng.Intn(len(img.snapshots))].name)
		case r < 17 && len(img.snapshots) > 0:
			op = "snapshot delete"
			err = img.SnapshotDelete(img.snapshots[rng.Intn(len(img.snapshots))].name)
		case r < 18:
			op = "resize"
			if img.Size() > 4<<20 && rng.Intn(2) == 0 {
				// Shrinking needs the snapshots gone.
				for len(img.snapshots) > 0 && err == nil {
					err = img.SnapshotDelete(img.snapshots[0].name)
				}
				if err == nil {
					err = img.Resize(img.Size()-1<<20, true)
				}
			} else {
				err = img.Resize(img.Size()+1<<20, false)
			}
		case r < 19:
			op = "check -r all"
			_, err = img.Check(block.RepairAll)
		default:
			op = "flush"
			err = img.Flush()
		}
		if err != nil {
			t.Fatalf("%s: %v", op, err)
		}
		verify(op)
	}
}
