package imgtool

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"vdisk/block"
	_ "vdisk/format/qcow2"
	_ "vdisk/format/raw"
	_ "vdisk/protocol/file"
)

// A format that takes a backing file, standing in for qcow2.
var fakeBacking = &block.Format{
	Name:   "imgtoolback",
	Create: func(f block.File, o block.Options) error { return nil },
	CreateOptions: []block.OptionSpec{
		{Name: "cluster_size", Type: block.OptSize, Default: "65536"},
		{Name: "size", Type: block.OptSize},
		{Name: "backing_file", Type: block.OptString},
		{Name: "backing_fmt", Type: block.OptString},
		{Name: "lazy_refcounts", Type: block.OptBool, Default: "off"},
	},
}

func init() { block.Register(fakeBacking) }

func TestPrepareCreate(t *testing.T) {
	dir := t.TempDir()
	base := filepath.Join(dir, "base.img")
	if err := block.Create(base, "raw", block.Options{"size": int64(3 << 20)}); err != nil {
		t.Fatal(err)
	}
	top := filepath.Join(dir, "top.img")

	f, o, err := PrepareCreate(CreateRequest{Name: top, Format: "imgtoolback", Backing: "base.img", BackingFormat: "raw", Size: -1})
	if err != nil {
		t.Fatal(err)
	}
	// The backing name is relative to the new image, and gives the size.
	if got := FormattingLine("top.img", f, o); got != "Formatting 'top.img', fmt=imgtoolback cluster_size=65536 size=3145728 backing_file=base.img backing_fmt=raw lazy_refcounts=off" {
		t.Errorf("line: %s", got)
	}
	_, o, err = PrepareCreate(CreateRequest{Name: top, Format: "imgtoolback", Options: "lazy_refcounts=on,cluster_size=4k", Backing: "base.img", BackingFormat: "raw", Size: 1 << 20})
	if err != nil || o.Size("size", 0) != 1<<20 || !o.Bool("lazy_refcounts", false) || o.Size("cluster_size", 0) != 4096 {
		t.Errorf("explicit size and options: %v %v", o, err)
	}
	_, o, err = PrepareCreate(CreateRequest{Name: top, Format: "imgtoolback", Options: "backing_file=we,,ird.img,backing_fmt=raw", Size: 1 << 20})
	if err != nil || o.String("backing_file", "") != "we,ird.img" {
		t.Errorf(",, escaping: %v %v", o, err)
	}

	for _, c := range []struct {
		r    CreateRequest
		want string
	}{
		{CreateRequest{Name: top, Format: "raw", Backing: "base.img", BackingFormat: "raw", Size: 1}, "backing file not supported for file format 'raw'"},
		{CreateRequest{Name: top, Format: "imgtoolback", Backing: "base.img", Size: -1}, "without backing format (detected format of base.img: raw; pass -F raw)"},
		{CreateRequest{Name: top, Format: "imgtoolback", Backing: "missing.img", BackingFormat: "raw", Size: -1}, "could not open backing file"},
		{CreateRequest{Name: top, Format: "imgtoolback", BackingFormat: "raw", Size: 1}, "needs a backing file"},
		{CreateRequest{Name: top, Format: "imgtoolback", Backing: "base.img", BackingFormat: "nosuch", Size: 1}, "unknown format"},
		{CreateRequest{Name: top, Format: "imgtoolback", Options: "backing_file=x", Backing: "base.img", BackingFormat: "raw", Size: 1}, "not both"},
		{CreateRequest{Name: top, Size: -1}, "needs a size"},
		{CreateRequest{Name: top, Options: "size=1M", Size: 1}, "size given twice"},
		{CreateRequest{Name: top, Format: "nosuch", Size: 1}, "unknown format 'nosuch'"},
		{CreateRequest{Name: top, Format: "mem", Size: 1}, "does not support image creation"},
		{CreateRequest{Name: top, Options: "bogus=1", Size: 1}, "invalid parameter 'bogus'"},
	} {
		_, _, err := PrepareCreate(c.r)
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), top) {
			t.Errorf("%+v: error %v, want one naming the file and saying %q", c.r, err, c.want)
		}
	}
	// With the size and format given, a missing backing file is not opened.
	if _, _, err := PrepareCreate(CreateRequest{Name: top, Format: "imgtoolback", Backing: "later.img", BackingFormat: "raw", Size: 1}); err != nil {
		t.Errorf("missing backing file with size and format: %v", err)
	}
	if _, err := os.Stat(top); !os.IsNotExist(err) {
		t.Error("PrepareCreate made a file")
	}
}

func TestFormattingLineRaw(t *testing.T) {
	f, o, err := PrepareCreate(CreateRequest{Name: "a.img", Options: "preallocation=full", Size: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if got := FormattingLine("a.img", f, o); got != "Formatting 'a.img', fmt=raw size=1048576 preallocation=full" {
		t.Errorf("%s", got)
	}
}

func TestConvertFiles(t *testing.T) {
	dir := t.TempDir()
	src, dst := filepath.Join(dir, "src.img"), filepath.Join(dir, "dst.img")
	if err := block.Create(src, "raw", block.Options{"size": int64(4 << 20)}); err != nil {
		t.Fatal(err)
	}
	img, err := block.Open(src, block.OpenOptions{Format: "raw"})
	if err != nil {
		t.Fatal(err)
	}
	img.WriteAt([]byte("hello"), 3<<20)
	img.Close()
	if err := Convert(src, dst, ConvertOptions{SrcFormat: "raw", DstFormat: "raw"}); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(dst)
	if len(got) != 4<<20 || string(got[3<<20:3<<20+5]) != "hello" {
		t.Fatalf("converted image wrong: %d bytes", len(got))
	}
	// A failed conversion removes the target it created.
	bad := filepath.Join(dir, "bad.img")
	if err := Convert(src, bad, ConvertOptions{Copy: CopyOptions{Compress: true}}); err == nil || !strings.Contains(err.Error(), "bad.img") {
		t.Errorf("compressing into raw: %v", err)
	}
	if _, err := os.Stat(bad); !os.IsNotExist(err) {
		t.Error("failed convert left its target behind")
	}
	if err := Convert(filepath.Join(dir, "missing"), bad, ConvertOptions{}); err == nil {
		t.Error("missing source accepted")
	}
	// -n writes into an existing image, zeroing what the source lacks.
	os.WriteFile(bad, bytes.Repeat([]byte{1}, 4<<20), 0o644)
	if err := Convert(src, bad, ConvertOptions{NoCreate: true, DstFormat: "raw", Unsafe: true}); err != nil {
		t.Fatal(err)
	}
	got2, _ := os.ReadFile(bad)
	if !bytes.Equal(got, got2) {
		t.Error("-n conversion differs from the source")
	}
}

// The backing image is read without its locks, as qemu-img create does,
// so an overlay can be made while the backing image is open for writing.
func TestPrepareCreateBackingInUse(t *testing.T) {
	dir := t.TempDir()
	base, top := filepath.Join(dir, "base.qcow2"), filepath.Join(dir, "top.img")
	f, _ := block.Lookup("qcow2")
	o, err := block.ParseOptions(f.CreateOptions, [][2]string{{"size", "1M"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := block.Create(base, "qcow2", o); err != nil {
		t.Fatal(err)
	}
	w, err := block.Open(base, block.OpenOptions{Format: "qcow2"})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	for _, fmtName := range []string{"qcow2", ""} {
		_, o, err := PrepareCreate(CreateRequest{Name: top, Format: "imgtoolback", Backing: "base.qcow2", BackingFormat: fmtName, Size: -1})
		if fmtName == "" {
			// Probed only to say which format to name.
			if err == nil || !strings.Contains(err.Error(), "pass -F qcow2") {
				t.Errorf("without -F: %v", err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("backing image open for writing: %v", err)
		}
		if o.Size("size", -1) != 1<<20 {
			t.Errorf("size %d, want the backing image's", o.Size("size", -1))
		}
	}
}
