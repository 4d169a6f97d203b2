package imgtool

import (
	"fmt"
	"strings"

	"vdisk/block"
)

// Check exit statuses, as qemu-img check's.
const (
	CheckClean       = 0
	CheckFailed      = 1
	CheckCorruptions = 2
	CheckLeaks       = 3
	CheckUnsupported = 63
)

// CheckStatus is the exit status for a completed check.
func CheckStatus(r *block.CheckResult) int {
	switch {
	case r.CheckErrors > 0:
		return CheckFailed
	case r.Corruptions > 0:
		return CheckCorruptions
	case r.Leaks > 0:
		return CheckLeaks
	}
	return CheckClean
}

// CheckDict is qemu-img check's JSON object.
func CheckDict(r *block.CheckResult) *Dict {
	d := &Dict{}
	d.Set("filename", r.Filename)
	d.Set("format", r.Format)
	d.Set("check-errors", int64(r.CheckErrors))
	opt := func(k string, v int64) {
		if v != 0 {
			d.Set(k, v)
		}
	}
	opt("image-end-offset", r.ImageEndOffset)
	opt("corruptions", int64(r.Corruptions))
	opt("leaks", int64(r.Leaks))
	opt("corruptions-fixed", int64(r.CorruptionsFixed))
	opt("leaks-fixed", int64(r.LeaksFixed))
	opt("total-clusters", r.TotalClusters)
	opt("allocated-clusters", r.AllocatedClusters)
	opt("fragmented-clusters", r.FragmentedClusters)
	opt("compressed-clusters", r.CompressedClusters)
	return d
}

// CheckJSON renders a check result as qemu-img check --output json.
func CheckJSON(r *block.CheckResult) string { return PrettyJSON(CheckDict(r)) + "\n" }

// CheckHuman renders a check result as qemu-img check does.
func CheckHuman(r *block.CheckResult) string {
	var b strings.Builder
	if r.Corruptions == 0 && r.Leaks == 0 && r.CheckErrors == 0 {
		b.WriteString("No errors were found on the image.\n")
	} else {
		if r.Corruptions > 0 {
			fmt.Fprintf(&b, "\n%d errors were found on the image.\n"+
				"Data may be corrupted, or further writes to the image may corrupt it.\n", r.Corruptions)
		}
		if r.Leaks > 0 {
			fmt.Fprintf(&b, "\n%d leaked clusters were found on the image.\n"+
				"This means waste of disk space, but no harm to data.\n", r.Leaks)
		}
		if r.CheckErrors > 0 {
			fmt.Fprintf(&b, "\n%d internal errors have occurred during the check.\n", r.CheckErrors)
		}
	}
	if r.TotalClusters != 0 && r.AllocatedClusters != 0 {
		fmt.Fprintf(&b, "%d/%d = %0.2f%% allocated, %0.2f%% fragmented, %0.2f%% compressed clusters\n",
			r.AllocatedClusters, r.TotalClusters,
			float64(r.AllocatedClusters)*100/float64(r.TotalClusters),
			float64(r.FragmentedClusters)*100/float64(r.AllocatedClusters),
			float64(r.CompressedClusters)*100/float64(r.AllocatedClusters))
	}
	if r.ImageEndOffset != 0 {
		fmt.Fprintf(&b, "Image end offset: %d\n", r.ImageEndOffset)
	}
	return b.String()
}

// RepairedHeader is what qemu-img check -r prints before re-checking an
// image it repaired.
func RepairedHeader(r *block.CheckResult) string {
	return fmt.Sprintf("The following inconsistencies were found and repaired:\n\n"+
		"    %d leaked clusters\n    %d corruptions\n\nDouble checking the fixed image now...\n",
		r.LeaksFixed, r.CorruptionsFixed)
}
