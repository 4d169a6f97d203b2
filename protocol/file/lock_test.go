package file_test

import (
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"vdisk/block"
	_ "vdisk/format/qcow2"
	_ "vdisk/format/raw"
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

// holdWritable starts qemu-io with the image open for writing and waits
// until it holds its locks; it returns the error a writable open then
// gets. qemu-io is killed when the test ends.
func holdWritable(t *testing.T, format, name string) (*exec.Cmd, error) {
	t.Helper()
	q := exec.Command("qemu-io", "-f", format, "-c", "sleep 20000", name)
	if err := q.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		q.Process.Kill()
		q.Wait()
	})
	var err error
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		var f block.File
		if f, err = file.Open(name, block.OpenFlags{}); err != nil {
			return q, err
		}
		f.Close()
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatal("writable open kept succeeding while qemu-io held the image")
	return nil, nil
}

func newQcow2(t *testing.T) string {
	t.Helper()
	name := t.TempDir() + "/lock.qcow2"
	if out, err := exec.Command("qemu-img", "create", "-f", "qcow2", name, "1M").CombinedOutput(); err != nil {
		t.Fatalf("qemu-img create: %v %s", err, out)
	}
	return name
}

// While qemu-io has the image open for writing, a writable open fails
// with a message that says why, and a read with force-share works.
func TestQEMUHoldsImage(t *testing.T) {
	name := newImage(t)
	q, err := holdWritable(t, "raw", name)
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

// A read-only open of a raw image lets QEMU write it but not resize it, as
// qemu-nbd -r does; a qcow2 reader does not, since a writer could change
// the metadata under it.
func TestRawReaderSharesWrite(t *testing.T) {
	name := newImage(t)
	for _, opts := range []block.OpenOptions{{ReadOnly: true}, {ReadOnly: true, Format: "raw"}} {
		img, err := block.Open(name, opts)
		if err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command("qemu-io", "-f", "raw", "-c", "write -P 0x5a 0 512", name).CombinedOutput()
		if err != nil {
			t.Errorf("qemu-io write while vdisk reads raw (format %q): %v %s", opts.Format, err, out)
		}
		b := make([]byte, 512)
		if _, err := img.ReadAt(b, 0); err != nil || b[0] != 0x5a || b[511] != 0x5a {
			t.Errorf("read after qemu-io's write: %v %x", err, b[:4])
		}
		// Resizing is refused, as with qemu-nbd -r: the reader's size
		// must stay true.
		out, err = exec.Command("qemu-img", "resize", "-f", "raw", name, "2M").CombinedOutput()
		if err == nil || !strings.Contains(string(out), `Failed to get "resize" lock`) {
			t.Errorf("qemu-img resize while vdisk reads raw (format %q): %v %s", opts.Format, err, out)
		}
		if st, err := os.Stat(name); err != nil || st.Size() != 1<<20 {
			t.Errorf("size after the refused resize: %v %v", st, err)
		}
		img.Close()
	}
	// The container alone (no format known) keeps the strict reader locks.
	f, err := file.Open(name, block.OpenFlags{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("qemu-io", "-f", "raw", "-c", "write 0 512", name).CombinedOutput()
	if err == nil || !strings.Contains(string(out), `"write" lock`) {
		t.Errorf("qemu-io write while the file is open read-only without a format: %v %s", err, out)
	}
	f.Close()

	q := newQcow2(t)
	img, err := block.Open(q, block.OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	out, err = exec.Command("qemu-io", "-f", "qcow2", "-c", "write 0 512", q).CombinedOutput()
	if err == nil || !strings.Contains(string(out), `Failed to get "write" lock`) {
		t.Errorf("qemu-io write while vdisk reads qcow2: %v %s", err, out)
	}
}

// While QEMU writes a raw image, vdisk can open it read-only (probed or
// named), as qemu-img info and map can; a qcow2 image still refuses.
func TestQEMUWriterAllowsRawReader(t *testing.T) {
	name := newImage(t)
	if _, err := holdWritable(t, "raw", name); err == nil {
		t.Fatal("no lock error")
	}
	for _, opts := range []block.OpenOptions{{ReadOnly: true}, {ReadOnly: true, Format: "raw"}} {
		img, err := block.Open(name, opts)
		if err != nil {
			t.Errorf("read-only open (format %q) while qemu-io writes raw: %v", opts.Format, err)
			continue
		}
		img.Close()
	}
	if img, err := block.Open(name, block.OpenOptions{}); err == nil {
		img.Close()
		t.Error("writable open while qemu-io writes")
	}

	q := newQcow2(t)
	if _, err := holdWritable(t, "qcow2", q); err == nil {
		t.Fatal("no lock error")
	}
	if img, err := block.Open(q, block.OpenOptions{ReadOnly: true}); err == nil {
		img.Close()
		t.Error("read-only qcow2 open while qemu-io writes it")
	} else if !strings.Contains(err.Error(), `shared "write" lock`) || !strings.Contains(err.Error(), q) {
		t.Errorf("unhelpful error: %v", err)
	}
	img, err := block.Open(q, block.OpenOptions{ReadOnly: true, ForceShare: true})
	if err != nil {
		t.Fatalf("force-share read: %v", err)
	}
	img.Close()
}
