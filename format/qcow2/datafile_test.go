package qcow2_test

import (
	"bytes"
	"crypto/sha256"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"vdisk/block"
)

// TestDataFileRandomIO drives seeded random writes, write-zeroes and
// discards (cluster 0 included: in a data file its entry has host offset
// 0 and only COPIED tells it from an unallocated one) through vdisk into
// images qemu-img made with an external data file, against an in-memory
// mirror; qemu-img must then read the same bytes and find the image
// clean, and with data_file_raw the data file must be the guest view.
func TestDataFileRandomIO(t *testing.T) {
	for _, tc := range []struct{ name, opts string }{
		{"plain", "data_file=d.raw"},
		{"raw", "data_file=d.raw,data_file_raw=on"},
		{"ext", "data_file=d.raw,extended_l2=on"},
		{"small", "data_file=d.raw,cluster_size=4k,lazy_refcounts=on"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			name := filepath.Join(dir, "a.qcow2")
			const size = 3 << 20
			createIn(t, dir, tc.opts, "3M")
			img, err := block.Open(name, block.OpenOptions{})
			if err != nil {
				t.Fatal(err)
			}
			mirror := make([]byte, size)
			rng := rand.New(rand.NewSource(7))
			for i := 0; i < 300; i++ {
				off := rng.Int63n(size)
				n := min(rng.Int63n(200<<10)+1, size-off)
				if i%50 == 0 {
					off, n = 0, int64(rng.Intn(3)+1)<<16
				}
				switch rng.Intn(5) {
				case 0:
					if err := img.WriteZeroes(off, n, block.ZeroFlags(rng.Intn(2))*block.ZeroMayUnmap); err != nil {
						t.Fatalf("write zeroes %d+%d: %v", off, n, err)
					}
					clear(mirror[off : off+n])
				case 1:
					d, ok := img.(interface{ Discard(off, n int64) error })
					if !ok {
						t.Fatal("no Discard")
					}
					if err := d.Discard(off, n); err != nil {
						t.Fatalf("discard: %v", err)
					}
					// Only whole clusters are discarded; they read as zeros.
					cs := int64(65536)
					if tc.name == "small" {
						cs = 4096
					}
					a, b := (off+cs-1)/cs*cs, (off+n)/cs*cs
					if off+n == size {
						b = size
					}
					if a < b {
						clear(mirror[a:b])
					}
				default:
					p := make([]byte, n)
					rng.Read(p)
					if _, err := img.WriteAt(p, off); err != nil {
						t.Fatalf("write %d+%d: %v", off, n, err)
					}
					copy(mirror[off:], p)
				}
				if i%100 == 99 {
					if err := img.Flush(); err != nil {
						t.Fatal(err)
					}
				}
			}
			got := make([]byte, size)
			if _, err := img.ReadAt(got, 0); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, mirror) {
				t.Fatal("vdisk reads differ from the mirror")
			}
			if err := img.Close(); err != nil {
				t.Fatal(err)
			}
			qemuIn(t, dir, "qemu-img", "check", "-q", "a.qcow2")
			if q := qemuRawIn(t, dir); !bytes.Equal(q, mirror) {
				i := 0
				for q[i] == mirror[i] {
					i++
				}
				t.Fatalf("qemu-img reads differ from the mirror at %#x\n%s", i, qemuIn(t, dir, "qemu-img", "map", "--output=json", "a.qcow2"))
			}
			if tc.name == "raw" {
				d, err := os.ReadFile(filepath.Join(dir, "d.raw"))
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(d, mirror) {
					t.Fatal("raw data file differs from the guest view")
				}
				if !strings.Contains(string(qemuIn(t, dir, "qemu-img", "info", "a.qcow2")), "data file raw: true") {
					t.Fatal("data_file_raw lost")
				}
			}
		})
	}
}

// createIn makes dir/a.qcow2 with qemu-img run in dir: qemu-img creates
// a relative data file name relative to its working directory, while the
// image resolves it relative to its own.
func createIn(t *testing.T, dir, opts, size string) {
	t.Helper()
	cmd := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-o", opts, "a.qcow2", size)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("qemu-img create -o %s: %v\n%s", opts, err, out)
	}
}

// qemuIn runs a qemu tool in dir, where qemu 7.2 looks for relative data
// file names.
func qemuIn(t *testing.T, dir, tool string, args ...string) []byte {
	t.Helper()
	cmd := exec.Command(tool, args...)
	cmd.Dir = dir
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %s: %v", tool, strings.Join(args, " "), err)
	}
	return out
}

func qemuRawIn(t *testing.T, dir string) []byte {
	t.Helper()
	qemuIn(t, dir, "qemu-img", "convert", "-O", "raw", "a.qcow2", "out.raw")
	b, err := os.ReadFile(filepath.Join(dir, "out.raw"))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func sum(t *testing.T, name string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

// TestDataFileReadOnlyAndLocks: a read-only open changes neither file;
// a writable open holds QEMU's locks on the data file too, so qemu-io
// cannot write it meanwhile, and Close releases them.
func TestDataFileReadOnlyAndLocks(t *testing.T) {
	dir := t.TempDir()
	name := filepath.Join(dir, "a.qcow2")
	data := filepath.Join(dir, "sub", "d.raw")
	os.Mkdir(filepath.Dir(data), 0o755)
	createIn(t, dir, "data_file=sub/d.raw", "1M")
	qemuIn(t, dir, "qemu-io", "-c", "write -P 5 0 100k", "a.qcow2")
	s1, s2 := sum(t, name), sum(t, data)
	img, err := block.Open(name, block.OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 100<<10)
	if _, err := img.ReadAt(buf, 0); err != nil || buf[0] != 5 || buf[len(buf)-1] != 5 {
		t.Fatalf("read: %v", err)
	}
	if _, err := img.WriteAt(buf, 0); err == nil {
		t.Fatal("write to a read-only image succeeded")
	}
	img.Close()
	if sum(t, name) != s1 || sum(t, data) != s2 {
		t.Fatal("read-only open changed a file")
	}

	img, err = block.Open(name, block.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("qemu-io", "-f", "raw", "-c", "write 0 512", data).CombinedOutput(); err == nil {
		t.Fatalf("qemu-io wrote the data file of an image open for writing: %s", out)
	}
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
	qemuIO(t, data, "raw", "read -P 5 0 512")
}

// TestDataFileRefused: what a data file rules out fails clearly and
// leaves the image as it was.
func TestDataFileRefused(t *testing.T) {
	dir := t.TempDir()
	name := filepath.Join(dir, "a.qcow2")
	createIn(t, dir, "data_file=d.raw", "1M")
	img, err := block.Open(name, block.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cw := img.(block.CompressedWriter)
	if err := cw.WriteCompressed(make([]byte, 65536), 0); err == nil || !strings.Contains(err.Error(), "external data file") {
		t.Fatalf("compressed write: %v", err)
	}
	sc, ok := img.(interface{ SnapshotCreate(string) error })
	if !ok {
		t.Fatal("no SnapshotCreate")
	}
	if err := sc.SnapshotCreate("s"); err == nil || !strings.Contains(err.Error(), "external data file") {
		t.Fatalf("snapshot create: %v", err)
	}
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
	qemuIn(t, dir, "qemu-img", "check", "-q", "a.qcow2")
	if out := string(qemuIn(t, dir, "qemu-img", "snapshot", "-l", "a.qcow2")); out != "" {
		t.Fatalf("snapshots: %q", out)
	}
}

// TestDataFileResize: growing extends the data file to the new size, and
// the new area reads as zeros even where the data file held old bytes.
func TestDataFileResize(t *testing.T) {
	dir := t.TempDir()
	name := filepath.Join(dir, "a.qcow2")
	createIn(t, dir, "data_file=d.raw,data_file_raw=on", "1M")
	img, err := block.Open(name, block.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := img.(block.Resizer).Resize(3<<20, false); err != nil {
		t.Fatal(err)
	}
	p := bytes.Repeat([]byte{9}, 4096)
	if _, err := img.WriteAt(p, 2<<20); err != nil {
		t.Fatal(err)
	}
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
	qemuIn(t, dir, "qemu-img", "check", "-q", "a.qcow2")
	want := make([]byte, 3<<20)
	copy(want[2<<20:], p)
	if !bytes.Equal(qemuRawIn(t, dir), want) {
		t.Fatal("qemu-img reads differ after resize")
	}
	if st, err := os.Stat(filepath.Join(dir, "d.raw")); err != nil || st.Size() != 3<<20 {
		t.Fatalf("data file size after resize: %v %v", st.Size(), err)
	}
}

// TestDataFileCorruptEntries: L2 entries a data file rules out (a host
// offset other than the guest offset, a compressed cluster) are errors for
// reads and for check, never panics or reads of other guest data.
func TestDataFileCorruptEntries(t *testing.T) {
	for _, tc := range []struct {
		name  string
		entry uint64
		want  string
	}{
		{"offset", 1<<63 | 0x30000, "does not match guest cluster offset"},
		{"compressed", 1<<62 | 0x30000, "compressed cluster"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			name := filepath.Join(dir, "a.qcow2")
			createIn(t, dir, "data_file=d.raw", "1M")
			qemuIn(t, dir, "qemu-io", "-c", "write -P 1 0 128k", "a.qcow2")
			b, err := os.ReadFile(name)
			if err != nil {
				t.Fatal(err)
			}
			be := func(o int) uint64 {
				var v uint64
				for _, c := range b[o : o+8] {
					v = v<<8 | uint64(c)
				}
				return v
			}
			l2 := int(be(int(be(40))) & 0x00fffffffffffe00)
			for k := 0; k < 8; k++ {
				b[l2+8+k] = byte(tc.entry >> (56 - 8*k))
			}
			if err := os.WriteFile(name, b, 0o644); err != nil {
				t.Fatal(err)
			}
			img, err := block.Open(name, block.OpenOptions{ReadOnly: true})
			if err != nil {
				t.Fatal(err)
			}
			defer img.Close()
			buf := make([]byte, 4096)
			if _, err := img.ReadAt(buf, 0); err != nil {
				t.Fatalf("intact cluster 0: %v", err)
			}
			if _, err := img.ReadAt(buf, 65536); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("read: got %v, want %q", err, tc.want)
			}
			res, err := img.(block.Checker).Check(block.RepairNone)
			if err != nil {
				t.Fatal(err)
			}
			if res.Corruptions != 1 {
				t.Fatalf("check: %d corruptions, want 1: %v", res.Corruptions, res.Messages)
			}
		})
	}
}
