package vhd_test

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"vdisk/block"
	_ "vdisk/drivers"
	"vdisk/imgtool"
)

// forkMu keeps vdisk from opening an image for writing while a parallel
// test starts a process: between fork and exec the child shares the open
// file descriptions of the moment, so it briefly holds the OFD image locks
// of a file this process just closed (block.Create's), and the writable
// open that follows would see them as another user's.
var forkMu sync.RWMutex

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	forkMu.RLock()
	out, err := exec.Command(name, args...).CombinedOutput()
	forkMu.RUnlock()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

type qemuExtent struct {
	Start   int64  `json:"start"`
	Length  int64  `json:"length"`
	Depth   int    `json:"depth"`
	Present bool   `json:"present"`
	Zero    bool   `json:"zero"`
	Data    bool   `json:"data"`
	Offset  *int64 `json:"offset,omitempty"`
}

func qemuMap(t *testing.T, file string) []qemuExtent {
	var m []qemuExtent
	if err := json.Unmarshal([]byte(run(t, "qemu-img", "map", "-f", "vpc", "--output", "json", file)), &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// ourMap renders MapChain the way qemu-img map --output json does.
func ourMap(t *testing.T, img block.Image) []qemuExtent {
	exts, err := block.MapChain(img, 0, img.Size())
	if err != nil {
		t.Fatal(err)
	}
	var out []qemuExtent
	for _, e := range exts {
		q := qemuExtent{Start: e.Offset, Length: e.Length, Depth: e.Depth,
			Present: e.Status&block.StatusAllocated != 0, Zero: e.Status&block.StatusZero != 0, Data: e.Status&block.StatusData != 0}
		if e.HostOffset >= 0 {
			h := e.HostOffset
			q.Offset = &h
		}
		out = append(out, q)
	}
	return out
}

func qemuSize(t *testing.T, file string) int64 {
	var info struct {
		VirtualSize int64 `json:"virtual-size"`
	}
	if err := json.Unmarshal([]byte(run(t, "qemu-img", "info", "-f", "vpc", "--output", "json", file)), &info); err != nil {
		t.Fatal(err)
	}
	return info.VirtualSize
}

func mapString(m []qemuExtent) string {
	b, _ := json.Marshal(m)
	return string(b)
}

// readAll reads an image fully (small images only).
func readAll(t *testing.T, img block.Image) []byte {
	buf := make([]byte, img.Size())
	if _, err := img.ReadAt(buf, 0); err != nil {
		t.Fatal(err)
	}
	return buf
}

// TestQemuImages opens images qemu-img made (by create and qemu-io
// writes, or by convert from a raw image) and checks that size, content,
// map and vdisk convert -O raw agree with qemu-img's.
func TestQemuImages(t *testing.T) {
	dir := t.TempDir()
	type tc struct {
		size    string
		sub     string
		force   bool
		convert bool
	}
	var cases []tc
	for _, size := range []string{"1M", "10M", "10486272", "40M", "1G"} {
		for _, sub := range []string{"dynamic", "fixed"} {
			for _, force := range []bool{false, true} {
				cases = append(cases, tc{size, sub, force, false})
			}
		}
	}
	cases = append(cases, tc{"64G", "dynamic", false, false}, tc{"64G", "dynamic", true, false}, tc{"200G", "dynamic", false, false})
	// 10,000,000 bytes is neither whole sectors nor a CHS geometry;
	// 10321920 is 20 cylinders of 16 heads and 63 sectors.
	for _, size := range []string{"10000000", "10321920", "64M"} {
		for _, sub := range []string{"dynamic", "fixed"} {
			for _, force := range []bool{false, true} {
				cases = append(cases, tc{size, sub, force, true})
			}
		}
	}
	for i, c := range cases {
		name := fmt.Sprintf("%s-%s-force%v", c.size, c.sub, c.force)
		if c.convert {
			name = "convert-" + name
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			file := filepath.Join(dir, fmt.Sprintf("q%d.vhd", i))
			o := "subformat=" + c.sub
			if c.force {
				o += ",force_size=on"
			}
			// A few patterns, one across a block boundary, one at the end.
			write := func(fmt_, file string, size int64) int64 {
				mid := min(int64(2044<<10), size/2)
				cmds := []string{"write -P 0x5a 0 4k", fmt.Sprintf("write -P 0x33 %d 8k", mid), fmt.Sprintf("write -P 0x77 %d 1000", size-1000)}
				args := []string{"-f", fmt_}
				for _, cmd := range cmds {
					args = append(args, "-c", cmd)
				}
				run(t, "qemu-io", append(args, file)...)
				return mid
			}
			var size, mid int64
			if c.convert {
				src := filepath.Join(dir, fmt.Sprintf("src%d.raw", i))
				// Made by truncate, as qemu-img create would round the
				// size up to whole sectors.
				n, err := block.ParseSize(c.size)
				if err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(src, nil, 0o644); err != nil {
					t.Fatal(err)
				}
				if err := os.Truncate(src, n); err != nil {
					t.Fatal(err)
				}
				write("raw", src, n)
				run(t, "qemu-img", "convert", "-f", "raw", "-O", "vpc", "-o", o, src, file)
				size = qemuSize(t, file)
				mid = min(int64(2044<<10), size/2)
			} else {
				run(t, "qemu-img", "create", "-q", "-f", "vpc", "-o", o, file, c.size)
				size = qemuSize(t, file)
				mid = write("vpc", file, size)
			}
			img, err := block.Open(file, block.OpenOptions{ReadOnly: true})
			if err != nil {
				t.Fatal(err)
			}
			defer img.Close()
			if img.Size() != size {
				t.Fatalf("virtual size %d, qemu-img says %d", img.Size(), size)
			}
			if got, want := mapString(ourMap(t, img)), mapString(qemuMap(t, file)); got != want {
				t.Fatalf("map differs\n ours: %s\nqemu: %s", got, want)
			}
			if size <= 256<<20 {
				raw := filepath.Join(dir, fmt.Sprintf("q%d.raw", i))
				run(t, "qemu-img", "convert", "-f", "vpc", "-O", "raw", file, raw)
				want, err := os.ReadFile(raw)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(readAll(t, img), want) {
					t.Fatal("content differs from qemu-img convert -O raw")
				}
				ours := filepath.Join(dir, fmt.Sprintf("v%d.raw", i))
				forkMu.Lock()
				err = imgtool.Convert(file, ours, imgtool.ConvertOptions{DstFormat: "raw", Copy: imgtool.CopyOptions{Sparse: 4096}})
				forkMu.Unlock()
				if err != nil {
					t.Fatal(err)
				}
				if got, err := os.ReadFile(ours); err != nil || !bytes.Equal(got, want) {
					t.Fatalf("vdisk convert -O raw differs from qemu-img convert -O raw (%v)", err)
				}
			} else {
				for _, r := range [][2]int64{{0, 8192}, {mid, 8192}, {size - 4096, 4096}} {
					want := []byte(run(t, "qemu-io", "-f", "vpc", "-r", "-c", fmt.Sprintf("read -v %d %d", r[0], r[1]), file))
					got := make([]byte, r[1])
					if _, err := img.ReadAt(got, r[0]); err != nil {
						t.Fatal(err)
					}
					if !bytes.Equal(hexdump(got, r[0]), firstLines(want, int(r[1]/16))) {
						t.Fatalf("content at %d differs from qemu-io", r[0])
					}
				}
			}
		})
	}
}

// hexdump renders like qemu-io's read -v, for comparing large images
// without converting them.
func hexdump(b []byte, base int64) []byte {
	var out bytes.Buffer
	for i := 0; i < len(b); i += 16 {
		fmt.Fprintf(&out, "%08x: ", base+int64(i))
		for j := 0; j < 16; j++ {
			fmt.Fprintf(&out, " %02x", b[i+j])
		}
		out.WriteString("  ")
		for j := 0; j < 16; j++ {
			c := b[i+j]
			if c < 32 || c > 126 {
				c = '.'
			}
			out.WriteByte(c)
		}
		out.WriteByte('\n')
	}
	return out.Bytes()
}

func firstLines(b []byte, n int) []byte {
	lines := bytes.SplitAfter(b, []byte("\n"))
	if len(lines) > n {
		lines = lines[:n]
	}
	return bytes.Join(lines, nil)
}

func create(t *testing.T, file string, opts map[string]string) {
	t.Helper()
	f, _ := block.Lookup("vhd")
	var pairs [][2]string
	for k, v := range opts {
		pairs = append(pairs, [2]string{k, v})
	}
	o, err := block.ParseOptions(f.CreateOptions, pairs)
	if err != nil {
		t.Fatal(err)
	}
	if err := block.Create(file, "vhd", o); err != nil {
		t.Fatal(err)
	}
}

// randomWrites writes to img and to a mirror byte slice alike.
func randomWrites(t *testing.T, img block.Image, mirror []byte, rng *rand.Rand, n int) {
	size := int64(len(mirror))
	for i := 0; i < n; i++ {
		l := int64(rng.Intn(3*4096) + 1)
		if rng.Intn(4) == 0 {
			l = int64(rng.Intn(4)+1) * 512
		}
		off := rng.Int63n(size - l)
		switch rng.Intn(6) {
		case 0:
			if err := img.WriteZeroes(off, l, 0); err != nil {
				t.Fatal(err)
			}
			clear(mirror[off : off+l])
		default:
			p := make([]byte, l)
			rng.Read(p)
			if _, err := img.WriteAt(p, off); err != nil {
				t.Fatal(err)
			}
			copy(mirror[off:], p)
		}
	}
}

// TestWriteMirror writes vdisk-made images randomly, with a raw mirror, and
// has qemu-img compare them and libvhdi read them.
func TestWriteMirror(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []map[string]string{
		{"size": "9M"},
		{"size": "9M", "subformat": "fixed"},
		{"size": "9M", "force_size": "on"},
		{"size": "9M", "force_size": "on", "subformat": "fixed"},
		{"size": "5M", "block_size": "64K"},
	} {
		t.Run(fmt.Sprint(c), func(t *testing.T) {
			file := filepath.Join(dir, "w.vhd")
			os.Remove(file)
			create(t, file, c)
			qsize := qemuSize(t, file)
			img, err := block.Open(file, block.OpenOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if img.Size() != qsize {
				t.Fatalf("size %d, qemu-img %d", img.Size(), qsize)
			}
			mirror := make([]byte, img.Size())
			randomWrites(t, img, mirror, rand.New(rand.NewSource(1)), 300)
			if !bytes.Equal(readAll(t, img), mirror) {
				t.Fatal("read-back differs from mirror")
			}
			if err := img.Close(); err != nil {
				t.Fatal(err)
			}
			raw := filepath.Join(dir, "mirror.raw")
			if err := os.WriteFile(raw, mirror, 0o644); err != nil {
				t.Fatal(err)
			}
			run(t, "qemu-img", "compare", "-f", "vpc", "-F", "raw", file, raw)
			if got, want := mapString(reopenMap(t, file)), mapString(qemuMap(t, file)); got != want {
				t.Fatalf("map differs\n ours: %s\nqemu: %s", got, want)
			}
			out := run(t, "vhdiinfo", file)
			if !strings.Contains(out, fmt.Sprintf("Media size\t\t\t: %d", len(mirror))) && !strings.Contains(out, fmt.Sprint(len(mirror))) {
				t.Fatalf("vhdiinfo does not show the size %d:\n%s", len(mirror), out)
			}
		})
	}
}

func reopenMap(t *testing.T, file string) []qemuExtent {
	img, err := block.Open(file, block.OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	return ourMap(t, img)
}

// TestCreatorSizeRules patches the creator application and current size of
// an image and checks that vdisk and qemu-img choose the same virtual size.
func TestCreatorSizeRules(t *testing.T) {
	dir := t.TempDir()
	for _, sub := range []string{"dynamic", "fixed"} {
		for _, app := range []string{"win ", "d2v ", "vpc ", "tap\x00", "CTXS", "qemu", "qem2", "vs  ", "vdsk"} {
			file := filepath.Join(dir, "c.vhd")
			os.Remove(file)
			run(t, "qemu-img", "create", "-q", "-f", "vpc", "-o", "subformat="+sub, file, "10M")
			b, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			foot := b[len(b)-512:]
			copy(foot[28:32], app)
			binary.BigEndian.PutUint64(foot[48:], 10<<20-4096) // current size differs from CHS
			binary.BigEndian.PutUint32(foot[64:], 0)
			var s uint32
			for _, c := range foot {
				s += uint32(c)
			}
			binary.BigEndian.PutUint32(foot[64:], ^s)
			if sub == "dynamic" {
				copy(b[:512], foot)
			}
			if err := os.WriteFile(file, b, 0o644); err != nil {
				t.Fatal(err)
			}
			want := qemuSize(t, file)
			img, err := block.Open(file, block.OpenOptions{ReadOnly: true, Format: "vhd"})
			if err != nil {
				t.Fatalf("%s %q: %v", sub, app, err)
			}
			if img.Size() != want {
				t.Errorf("%s creator %q: vdisk size %d, qemu-img %d", sub, app, img.Size(), want)
			}
			img.Close()
		}
	}
}
