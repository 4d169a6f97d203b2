package qcow2_test

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"vdisk/block"
	_ "vdisk/drivers"
	"vdisk/format/qcow2"
	"vdisk/protocol/file"
)

func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v\n%s%s", name, strings.Join(args, " "), err, out.String(), stderr.String())
	}
	return out.String()
}

func qemuIO(t testing.TB, img string, fmtName string, cmds ...string) {
	t.Helper()
	args := []string{"-f", fmtName}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	run(t, "qemu-io", append(args, img)...)
}

// readAll reads the whole image through vdisk.
func readAll(t testing.TB, name string) []byte {
	t.Helper()
	img, err := block.Open(name, block.OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatalf("open %s: %v", name, err)
	}
	defer img.Close()
	buf := make([]byte, img.Size())
	if _, err := img.ReadAt(buf, 0); err != nil {
		t.Fatalf("read %s: %v", name, err)
	}
	return buf
}

// qemuRaw converts an image to raw with qemu-img and returns the bytes.
func qemuRaw(t testing.TB, name string) []byte {
	t.Helper()
	out := filepath.Join(t.TempDir(), "out.raw")
	run(t, "qemu-img", "convert", "-U", "-O", "raw", name, out)
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// vdiskMap renders MapChain as qemu-img map --output json's objects.
func vdiskMap(t testing.TB, name string) []map[string]any {
	t.Helper()
	img, err := block.Open(name, block.OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatalf("open %s: %v", name, err)
	}
	defer img.Close()
	exts, err := block.MapChain(img, 0, img.Size())
	if err != nil {
		t.Fatalf("map %s: %v", name, err)
	}
	var out []map[string]any
	for _, e := range exts {
		m := map[string]any{
			"start": float64(e.Offset), "length": float64(e.Length), "depth": float64(e.Depth),
			"present": e.Status&block.StatusAllocated != 0, "zero": e.Status&block.StatusZero != 0,
			"data": e.Status&block.StatusData != 0,
		}
		if e.HostOffset >= 0 {
			m["offset"] = float64(e.HostOffset)
		}
		out = append(out, m)
	}
	return out
}

func qemuMap(t testing.TB, name string) []map[string]any {
	t.Helper()
	var out []map[string]any
	if err := json.Unmarshal([]byte(run(t, "qemu-img", "map", "-U", "--output", "json", name)), &out); err != nil {
		t.Fatal(err)
	}
	return out
}

// compareWithQemu checks content and map of an image against qemu-img.
func compareWithQemu(t *testing.T, name string) {
	t.Helper()
	want := qemuRaw(t, name)
	got := readAll(t, name)
	if !bytes.Equal(got, want) {
		i := 0
		for i < len(got) && i < len(want) && got[i] == want[i] {
			i++
		}
		t.Errorf("%s: content differs from qemu-img convert (len %d vs %d, first difference at %d)", name, len(got), len(want), i)
	}
	qm, vm := qemuMap(t, name), vdiskMap(t, name)
	if !reflect.DeepEqual(qm, vm) {
		qj, _ := json.Marshal(qm)
		vj, _ := json.Marshal(vm)
		t.Errorf("%s: map differs\nqemu:  %s\nvdisk: %s", name, qj, vj)
	}
}

// qemuCheck runs qemu-img check and fails on any error or leak.
func qemuCheck(t testing.TB, name string) {
	t.Helper()
	cmd := exec.Command("qemu-img", "check", "--output", "json", name)
	out, err := cmd.Output()
	var res map[string]any
	if jerr := json.Unmarshal(out, &res); jerr != nil {
		t.Fatalf("qemu-img check %s: %v %s", name, err, out)
	}
	for _, k := range []string{"corruptions", "leaks", "check-errors"} {
		if v, ok := res[k].(float64); ok && v != 0 {
			full, _ := exec.Command("qemu-img", "check", name).CombinedOutput()
			t.Fatalf("qemu-img check %s: %s=%v\n%s", name, k, v, full)
		}
	}
	if err != nil {
		t.Fatalf("qemu-img check %s: %v %s", name, err, out)
	}
}

// openWrapped opens a qcow2 image read/write through a wrapper of its
// file, which injects delays or failures.
func openWrapped(t testing.TB, name string, wrap func(block.File) block.File) block.Image {
	t.Helper()
	f, err := file.Open(name, block.OpenFlags{})
	if err != nil {
		t.Fatal(err)
	}
	img, err := qcow2.Open(wrap(f), &block.OpenOptions{Format: "qcow2"})
	if err != nil {
		t.Fatal(err)
	}
	return img
}
