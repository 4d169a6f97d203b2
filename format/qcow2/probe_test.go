package qcow2_test

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"vdisk/block"
)

// An image with the qcow2 magic but a version this driver does not know
// must not be probed as raw: a guest could then overwrite its header.
func TestProbeUnsupportedVersion(t *testing.T) {
	for _, v := range []uint32{1, 9} {
		t.Run(fmt.Sprint(v), func(t *testing.T) {
			name := filepath.Join(t.TempDir(), "v.qcow2")
			run(t, "qemu-img", "create", "-q", "-f", "qcow2", name, "1M")
			poke(t, name, 4, []byte{0, 0, 0, byte(v)})
			img, err := block.Open(name, block.OpenOptions{ReadOnly: true})
			if err == nil {
				info, _ := img.Info()
				img.Close()
				t.Fatalf("opened as %s", info.Format)
			}
			if want := fmt.Sprintf("Unsupported qcow2 version %d", v); !strings.Contains(err.Error(), want) {
				t.Fatalf("error %q does not say %q", err, want)
			}
		})
	}
}

// A damaged snapshot table keeps the image from opening, but a read-only
// check opens it without the snapshots and reports the damage, as
// qemu-img check does.
func TestCheckToleratesBrokenSnapshotTable(t *testing.T) {
	name := filepath.Join(t.TempDir(), "s.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", name, "1M")
	qemuIO(t, name, "qcow2", "write -P 1 0 64k")
	run(t, "qemu-img", "snapshot", "-c", "s1", name)
	poke(t, name, 64, be64b(0x7000000000))
	if img, err := block.Open(name, block.OpenOptions{ReadOnly: true}); err == nil {
		img.Close()
		t.Fatal("image with a snapshot table past the end opened")
	}
	img, err := block.Open(name, block.OpenOptions{ReadOnly: true, Check: true})
	if err != nil {
		t.Fatal(err)
	}
	res, err := img.(block.Checker).Check(block.RepairNone)
	if err != nil {
		t.Fatal(err)
	}
	if res.Corruptions == 0 || len(res.Messages) == 0 || !strings.Contains(res.Messages[0], "snapshot table") {
		t.Fatalf("check result: %+v", res)
	}
	img.Close()
	// A repairing check opens it read/write and drops the snapshot.
	rw, err := block.Open(name, block.OpenOptions{Check: true})
	if err != nil {
		t.Fatal(err)
	}
	res, err = rw.(block.Checker).Check(block.RepairAll)
	rw.Close()
	if err != nil || res.CorruptionsFixed == 0 || res.Corruptions != 0 || res.Leaks != 0 {
		t.Fatalf("repair: %v %+v", err, res)
	}
	qemuCheck(t, name)
	img, err = block.Open(name, block.OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatalf("open after the repair: %v", err)
	}
	if n := len(img.(interface{ Snapshots() []block.SnapshotInfo }).Snapshots()); n != 0 {
		t.Fatalf("%d snapshots left", n)
	}
	img.Close()
	qemuIO(t, name, "qcow2", "read -P 1 0 64k")
}
