package qcow2_test

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"vdisk/block"
)

type snapshotter interface {
	SnapshotCreate(name string) error
	SnapshotApply(name string) error
	SnapshotDelete(name string) error
	Snapshots() []block.SnapshotInfo
}

// snapOpFails runs a snapshot operation that must fail with an error
// saying want, and checks that it changed nothing: the snapshot list is
// the same, the image still checks clean in the same session, and
// qemu-img check agrees after the close writes back what the session
// holds. With same, the file is as the flush before the operation left it
// (an operation that failed writing may have written to free clusters).
func snapOpFails(t *testing.T, name string, img block.Image, want string, same bool, op func(s snapshotter) error) {
	t.Helper()
	if err := img.Flush(); err != nil {
		t.Fatal(err)
	}
	before, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	snaps := img.(snapshotter).Snapshots()
	opErr := op(img.(snapshotter))
	if opErr == nil {
		t.Fatal("the operation succeeded")
	}
	if got := img.(snapshotter).Snapshots(); len(got) != len(snaps) {
		t.Fatalf("the failed operation changed the snapshot list from %d to %d entries", len(snaps), len(got))
	}
	res, err := img.(block.Checker).Check(block.RepairNone)
	if err != nil {
		t.Fatal(err)
	}
	if res.Corruptions != 0 || res.Leaks != 0 {
		t.Fatalf("after the failed operation: %d corruptions, %d leaks\n%s", res.Corruptions, res.Leaks, strings.Join(res.Messages, "\n"))
	}
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
	qemuCheck(t, name)
	if after, _ := os.ReadFile(name); same && !bytes.Equal(after, before) {
		t.Fatal("the failed operation changed the file")
	}
	if !strings.Contains(opErr.Error(), want) {
		t.Fatalf("got error %v, want one saying %q", opErr, want)
	}
}

func openRW(t *testing.T, name string) block.Image {
	t.Helper()
	img, err := block.Open(name, block.OpenOptions{Format: "qcow2"})
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// Clusters shared by the active tree and two snapshots have refcount 3,
// the most 2-bit refcounts hold: a third snapshot, or applying one (which
// adds the snapshot tree's references before dropping the active tree's),
// is refused before any refcount changes.
func TestSnapshotRefcountOverflow(t *testing.T) {
	name := filepath.Join(t.TempDir(), "s.qcow2")
	vdiskCreate(t, name, "cluster_size=64k,refcount_bits=2", 1<<20)
	img := openRW(t, name)
	p := bytes.Repeat([]byte{7}, 64<<10)
	for i, off := range []int64{64 << 10, 0} {
		if _, err := img.WriteAt(p, off); err != nil {
			t.Fatal(err)
		}
		if err := img.(snapshotter).SnapshotCreate("s" + string(rune('1'+i))); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := img.WriteAt(p, 128<<10); err != nil {
		t.Fatal(err)
	}
	snapOpFails(t, name, img, "refcount_bits=2", true, func(s snapshotter) error { return s.SnapshotCreate("s3") })
	snapOpFails(t, name, openRW(t, name), "refcount_bits=2", true, func(s snapshotter) error { return s.SnapshotApply("s1") })
}

// Compressed streams fill a host cluster up to the largest refcount, as
// QEMU packs them: a snapshot of such an image is refused cleanly.
func TestSnapshotOfFullCompressedClusters(t *testing.T) {
	name := filepath.Join(t.TempDir(), "c.qcow2")
	vdiskCreate(t, name, "cluster_size=4k,refcount_bits=4", 1<<20)
	img := openRW(t, name)
	data := bytes.Repeat([]byte("compressible "), 1<<20/13+1)[:1<<20]
	if err := img.(block.CompressedWriter).WriteCompressed(data, 0); err != nil {
		t.Fatal(err)
	}
	snapOpFails(t, name, img, "refcount_bits=4", true, func(s snapshotter) error { return s.SnapshotCreate("s1") })
}

// A snapshot operation that fails for lack of room (a container that
// cannot grow, as an NBD export) leaves the image as it was: deleting
// fails writing the table without the snapshot, creating fails writing
// the new snapshot table after the L1 copy took the one free cluster.
func TestSnapshotWriteFailures(t *testing.T) {
	name := filepath.Join(t.TempDir(), "f.qcow2")
	vdiskCreate(t, name, "cluster_size=4k", 1<<20)
	img := openRW(t, name)
	if _, err := img.WriteAt(bytes.Repeat([]byte{1}, 64<<10), 0); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"s1", "s2"} {
		if err := img.(snapshotter).SnapshotCreate(s); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := img.WriteAt(bytes.Repeat([]byte{2}, 8<<10), 0); err != nil {
		t.Fatal(err)
	}
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
	openFixed := func() block.Image {
		st, err := os.Stat(name)
		if err != nil {
			t.Fatal(err)
		}
		return openWrapped(t, name, func(f block.File) block.File { return &fixedFile{File: f, size: st.Size()} })
	}
	snapOpFails(t, name, openFixed(), "writing snapshot table", false, func(s snapshotter) error { return s.SnapshotDelete("s1") })
	// One free cluster inside the file: the second cluster the last write
	// allocated, which no snapshot shares.
	img = openRW(t, name)
	if err := img.Discard(4<<10, 4<<10); err != nil {
		t.Fatal(err)
	}
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
	snapOpFails(t, name, openFixed(), "writing snapshot table", false, func(s snapshotter) error { return s.SnapshotCreate("s3") })
}

// The refcount headroom check before a snapshot keeps a bitmap of the
// file's clusters: a sparse file of small clusters (1 TiB of 512-byte
// ones here, 256 MiB of bitmap) must not size it beyond what check
// itself tracks.
func TestSnapshotOfSparseFileBoundsMemory(t *testing.T) {
	name := filepath.Join(t.TempDir(), "h.qcow2")
	vdiskCreate(t, name, "cluster_size=512", 1<<20)
	img := openRW(t, name)
	defer img.Close()
	if _, err := img.WriteAt(bytes.Repeat([]byte{3}, 4096), 0); err != nil {
		t.Fatal(err)
	}
	if err := img.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(name, 1<<40); err != nil {
		t.Fatal(err)
	}
	var err error
	if alloc := allocated(func() { err = img.(snapshotter).SnapshotCreate("s1") }); alloc > 64<<20 {
		t.Errorf("snapshot create allocated %d bytes", alloc)
	}
	if err != nil {
		t.Fatal(err)
	}
	if got := img.(snapshotter).Snapshots(); len(got) != 1 {
		t.Fatalf("%d snapshots, want 1", len(got))
	}
}
