package imgtool

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"vdisk/block"
	"vdisk/format/mem"
	_ "vdisk/protocol/file"
)

// panicImage stands for a driver with a bug: a RAM copy of its file whose
// ReadAt or WriteAt panics, chosen by the file's name.
type panicImage struct {
	block.Image
	onRead, onWrite bool
}

func (p *panicImage) ReadAt(b []byte, off int64) (int, error) {
	if p.onRead {
		panic("boom in ReadAt")
	}
	return p.Image.ReadAt(b, off)
}

func (p *panicImage) WriteAt(b []byte, off int64) (int, error) {
	if p.onWrite {
		panic("boom in WriteAt")
	}
	return p.Image.WriteAt(b, off)
}

func init() {
	block.Register(&block.Format{
		Name: "panictest",
		Open: func(f block.File, opts *block.OpenOptions) (block.Image, error) {
			defer f.Close()
			size, err := f.Size()
			if err != nil {
				return nil, err
			}
			m := mem.New(size)
			buf := make([]byte, size)
			if _, err := f.ReadAt(buf, 0); err != nil {
				return nil, err
			}
			m.WriteAt(buf, 0)
			base := filepath.Base(f.Name())
			return &panicImage{Image: m, onRead: strings.Contains(base, "panic-read"), onWrite: strings.Contains(base, "panic-write")}, nil
		},
		Create:        func(f block.File, opts block.Options) error { return f.Truncate(opts.Size("size", 0)) },
		CreateOptions: []block.OptionSpec{{Name: "size", Type: block.OptSize}},
	})
}

// A panic in a copy worker becomes an error naming the image whose driver
// panicked, instead of a crash with a Go stack trace.
func TestConvertRecoversDriverPanics(t *testing.T) {
	dir := t.TempDir()
	data := []byte(strings.Repeat("data", 1<<16))
	for _, n := range []string{"panic-read.img", "good.img"} {
		if err := os.WriteFile(filepath.Join(dir, n), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct{ src, dst, want string }{
		{"panic-read.img", "out.img", "panic-read.img: error while reading at byte 0: internal error: boom in ReadAt"},
		{"good.img", "panic-write.img", "panic-write.img: error while writing at byte 0: internal error: boom in WriteAt"},
	} {
		for _, workers := range []int{1, 8} {
			src, dst := filepath.Join(dir, tc.src), filepath.Join(dir, tc.dst)
			err := Convert(src, dst, ConvertOptions{SrcFormat: "panictest", DstFormat: "panictest", Copy: CopyOptions{Workers: workers}})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("%s -> %s with %d workers: %v, want %q", tc.src, tc.dst, workers, err, tc.want)
			}
			if _, err := os.Stat(dst); !os.IsNotExist(err) {
				t.Errorf("failed convert left %s behind (%v)", tc.dst, err)
			}
		}
	}
}
