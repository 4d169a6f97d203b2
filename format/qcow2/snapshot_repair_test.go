package qcow2_test

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"vdisk/block"
)

// TestSnapshotRepairKeepsLiveData: a corrupt header points the
// snapshot table at a live data cluster whose first bytes read as a
// snapshot entry with a misaligned L1 table. check -r all drops that
// snapshot and rewrites the table; it must not free (and punch) the data
// cluster the active L1 still references. qemu-img check -r all keeps the
// data in the same situation.
func TestSnapshotRepairKeepsLiveData(t *testing.T) {
	dir := t.TempDir()
	data := make([]byte, 64<<10)
	for i := range data {
		data[i] = 0xaa
	}
	// l1_offset 0x123 (misaligned), l1_size 1, no id, name or extra data.
	clear(data[:40])
	binary.BigEndian.PutUint64(data[0:], 0x123)
	binary.BigEndian.PutUint32(data[8:], 1)
	raw := filepath.Join(dir, "d.raw")
	if err := os.WriteFile(raw, data, 0o644); err != nil {
		t.Fatal(err)
	}
	name := filepath.Join(dir, "d.qcow2")
	run(t, "qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, name)
	out, err := exec.Command("qemu-img", "map", "--output=json", name).Output()
	if err != nil {
		t.Fatal(err)
	}
	var m []struct{ Offset int64 }
	if err := json.Unmarshal(out, &m); err != nil || len(m) == 0 || m[0].Offset == 0 {
		t.Fatalf("map: %s %v", out, err)
	}
	var hdr [12]byte
	binary.BigEndian.PutUint32(hdr[0:], 1)                   // nb_snapshots
	binary.BigEndian.PutUint64(hdr[4:], uint64(m[0].Offset)) // snapshots_offset
	f, err := os.OpenFile(name, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(hdr[:], 60); err != nil {
		t.Fatal(err)
	}
	f.Close()

	img, err := block.Open(name, block.OpenOptions{Check: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := img.(block.Checker).Check(block.RepairAll); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(data))
	if _, err := img.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	img.Close()
	if !bytes.Equal(got, data) {
		t.Fatalf("check -r all destroyed live guest data: reads %x...", got[:16])
	}
}

// TestDirtyLeakCheckKeepsSnapshots: check -r leaks must leave a
// damaged snapshot table alone (only -r all drops snapshots), also when the
// image is dirty from lazy refcounts, whose writable open rebuilds the
// refcounts first: a check open leaves that rebuild to Check, which must
// not drop the snapshot silently under -r leaks.
func TestDirtyLeakCheckKeepsSnapshots(t *testing.T) {
	dir := t.TempDir()
	name := filepath.Join(dir, "d.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "lazy_refcounts=on", name, "1M")
	qemuIO(t, name, "qcow2", "write -P 1 0 64k")
	run(t, "qemu-img", "snapshot", "-c", "s1", name)
	run(t, "qemu-img", "snapshot", "-c", "s2", name)
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	so := binary.BigEndian.Uint64(b[64:])
	binary.BigEndian.PutUint64(b[so:], 0x123) // snapshot s1: misaligned L1 table
	binary.BigEndian.PutUint64(b[72:], 1)     // incompatible features: dirty
	if err := os.WriteFile(name, b, 0o644); err != nil {
		t.Fatal(err)
	}
	img, err := block.Open(name, block.OpenOptions{Check: true})
	if err != nil {
		t.Fatal(err)
	}
	res, err := img.(block.Checker).Check(block.RepairLeaks)
	img.Close()
	if err != nil {
		t.Fatal(err)
	}
	b, err = os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	if n := binary.BigEndian.Uint32(b[60:]); n != 2 {
		t.Errorf("check -r leaks left %d of 2 snapshots (result %+v %v)", n, res, res.Messages)
	}
	if res.Corruptions == 0 {
		t.Errorf("check -r leaks reported no corruption on an image with a damaged snapshot table: %+v", res)
	}
}
