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
