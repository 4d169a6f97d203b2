package attach

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"vdisk/attach/ctl"
)

// sysParts lists the partitions the kernel has for dev as "pN start size"
// in 512-byte sectors.
func sysParts(t *testing.T, dev string) []string {
	t.Helper()
	name := filepath.Base(dev)
	paths, _ := filepath.Glob(filepath.Join("/sys/block", name, name+"p*"))
	var out []string
	for _, p := range paths {
		start, _ := os.ReadFile(filepath.Join(p, "start"))
		size, _ := os.ReadFile(filepath.Join(p, "size"))
		out = append(out, fmt.Sprintf("%s %s %s", strings.TrimPrefix(filepath.Base(p), name), strings.TrimSpace(string(start)), strings.TrimSpace(string(size))))
	}
	return out
}

func runSfdisk(t *testing.T, dev, script string) {
	t.Helper()
	// --no-tell-kernel: the kernel keeps its partitions, so that rescan has
	// to replace them.
	cmd := exec.Command("sfdisk", "-q", "--no-reread", "--no-tell-kernel", dev)
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("sfdisk: %v\n%s", err, out)
	}
}

func TestDaemonPartitions(t *testing.T) {
	c := startDaemon(t)
	img := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 16<<20); err != nil {
		t.Fatal(err)
	}
	runSfdisk(t, img, "label: gpt\n,4M,L\n,,L\n")
	for _, ro := range []bool{false, true} {
		u, err := c.Attach(ctl.AttachArgs{File: img, Format: "raw", ReadOnly: ro})
		if err != nil {
			t.Fatal(err)
		}
		want := "[p1 2048 8192 p2 10240 20480]"
		if got := fmt.Sprint(sysParts(t, u.Device)); got != want {
			t.Errorf("read-only %v: partitions after attach %s, want %s", ro, got, want)
		}
		if ro {
			if _, err := c.Detach(u.Unit, false); err != nil {
				t.Fatal(err)
			}
			if got := sysParts(t, u.Device); len(got) != 0 {
				t.Errorf("partitions left after detach: %v", got)
			}
			continue
		}
		// A new table written behind the kernel's back: p1 changes, p2
		// goes, p3 comes.
		runSfdisk(t, u.Device, "label: gpt\n,2M,L\nstart=20480,size=2048,type=L\n")
		parts, err := c.Rescan(u.Unit)
		if err != nil {
			t.Fatal(err)
		}
		if got, want := fmt.Sprint(sysParts(t, u.Device)), "[p1 2048 4096 p2 20480 2048]"; got != want {
			t.Errorf("after rescan: %s, want %s", got, want)
		}
		if len(parts) != 2 || parts[0].Device != u.Device+"p1" || parts[0].Start != 1<<20 || parts[0].Size != 2<<20 || parts[1].Number != 2 {
			t.Errorf("rescan answered %+v", parts)
		}
		// An open partition that changes stays, and rescan says so.
		f, err := os.Open(u.Device + "p1")
		if err != nil {
			t.Fatal(err)
		}
		runSfdisk(t, u.Device, "label: gpt\n,3M,L\nstart=20480,size=2048,type=L\n")
		if _, err := c.Rescan(u.Device); !errors.Is(err, syscall.EBUSY) || !strings.Contains(err.Error(), "p1") {
			t.Errorf("rescan with p1 open: %v", err)
		}
		f.Close()
		if _, err := c.Rescan(u.Device); err != nil {
			t.Fatal(err)
		}
		if got, want := fmt.Sprint(sysParts(t, u.Device)), "[p1 2048 6144 p2 20480 2048]"; got != want {
			t.Errorf("after rescan: %s, want %s", got, want)
		}
		// No table at all: every partition goes.
		zero, err := os.OpenFile(u.Device, os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		zero.WriteAt(make([]byte, 4096), 0)
		zero.Close()
		if parts, err := c.Rescan(u.Unit); err != nil || len(parts) != 0 || len(sysParts(t, u.Device)) != 0 {
			t.Errorf("rescan without a table: %+v, %v, %v", parts, err, sysParts(t, u.Device))
		}
		if _, err := c.Detach(u.Unit, false); err != nil {
			t.Fatal(err)
		}
		runSfdisk(t, img, "label: gpt\n,4M,L\n,,L\n")
	}
	if _, err := c.Rescan("vd9"); !errors.Is(err, syscall.ENXIO) {
		t.Errorf("rescan of no unit: %v", err)
	}
}
