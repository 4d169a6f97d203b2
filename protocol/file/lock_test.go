package file_test

import (
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"vdisk/block"
	"vdisk/protocol/file"
)

func newImage(t *testing.T) string {
	t.Helper()
	name := t.TempDir() + "/lock.img"
	if err := os.WriteFile(name, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	return name
}

// While qemu-io has the image open for writing, a writable open fails
// with a message that says why, and a read with force-share works.
func TestQEMUHoldsImage(t *testing.T) {
	name := newImage(t)
	q := exec.Command("qemu-io", "-f", "raw", "-c", "sleep 20000", name)
	if err := q.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		q.Process.Kill()
		q.Wait()
	}()
	// Wait for qemu-io to take its locks.
	var err error
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		var f block.File
		if f, err = file.Open(name, block.OpenFlags{}); err != nil {
			break
		}
		f.Close()
		time.Sleep(20 * time.Millisecond)
	}
	if err == nil {
		t.Fatal("writable open kept succeeding while qemu-io held the image")
	}
	if msg := err.Error(); !strings.Contains(msg, name) || !strings.Contains(msg, "lock") || !strings.Contains(msg, "-U") {
		t.Errorf("unhelpful error: %v", err)
	}
	f, err := file.Open(name, block.OpenFlags{ReadOnly: true, ForceShare: true})
	if err != nil {
		t.Fatalf("force-share read: %v", err)
	}
	b := make([]byte, 10)
	if _, err := f.ReadAt(b, 0); err != nil {
		t.Errorf("read: %v", err)
	}
	f.Close()
	// A writable open through block.Open fails the same way.
	if _, err := block.Open(name, block.OpenOptions{Format: "raw"}); err == nil {
		t.Error("block.Open for writing succeeded")
	}
	q.Process.Kill()
	q.Wait()
	f, err = file.Open(name, block.OpenFlags{})
	if err != nil {
		t.Fatalf("open after qemu-io exited: %v", err)
	}
	f.Close()
}

// While vdisk has the image open for writing, qemu-io cannot open it for
// writing, and qemu-io -U can read it.
func TestVdiskHoldsImage(t *testing.T) {
	name := newImage(t)
	f, err := file.Open(name, block.OpenFlags{})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out, err := exec.Command("qemu-io", "-f", "raw", "-c", "write 0 1", name).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "lock") {
		t.Errorf("qemu-io write while vdisk writes: %v %s", err, out)
	}
	out, err = exec.Command("qemu-io", "-r", "-U", "-f", "raw", "-c", "read 0 1", name).CombinedOutput()
	if err != nil {
		t.Errorf("qemu-io -U read: %v %s", err, out)
	}
	// A second vdisk writer is refused too.
	if g, err := file.Open(name, block.OpenFlags{}); err == nil {
		g.Close()
		t.Error("second writable open succeeded")
	}
	f.Close()
	out, err = exec.Command("qemu-io", "-f", "raw", "-c", "write 0 1", name).CombinedOutput()
	if err != nil {
		t.Errorf("qemu-io write after vdisk closed: %v %s", err, out)
	}
}

func TestOpenErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := file.Open(dir+"/missing", block.OpenFlags{}); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Errorf("missing: %v", err)
	}
	if _, err := file.Open(dir, block.OpenFlags{ReadOnly: true}); err == nil || !strings.Contains(err.Error(), "directory") {
		t.Errorf("directory: %v", err)
	}
	name := newImage(t)
	f, err := file.Open(name, block.OpenFlags{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt([]byte{1}, 0); err == nil {
		t.Error("write through a read-only container succeeded")
	}
	if err := f.Truncate(0); err == nil {
		t.Error("truncate through a read-only container succeeded")
	}
}
