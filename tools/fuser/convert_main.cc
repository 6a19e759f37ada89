// kvwire-fuser-convert: converts a C2C fuser checkpoint between the released
// torch.save form (final/projector_{i}.pt) and the safetensors form
// (final/projector_{i}.safetensors). The json files are rewritten in the
// reference's format; every projector is validated (names, shapes) first.
//
//   kvwire-fuser-convert --in=C2C_Fuser/qwen3_0.6b+qwen2.5_0.5b_Fuser
//       --out=/tmp/fuser-st --to=safetensors
#include <iostream>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "common/flags_help.h"
#include "common/fuser/c2c_projector.h"
#include "common/fuser/checkpoint.h"
#include "common/status_macros.h"

ABSL_FLAG(std::string, in, "", "Input checkpoint directory.");
ABSL_FLAG(std::string, out, "", "Output checkpoint directory (created).");
ABSL_FLAG(std::string, from, "auto", "Input weights: auto | pt | safetensors");
ABSL_FLAG(std::string, to, "safetensors", "Output weights: pt | safetensors");
ABSL_FLAG(std::string, dtype, "keep",
          "Output dtype: keep | bf16 | fp16 | fp32.");
ABSL_FLAG(bool, strict, false, "Reject state-dict entries the spec lacks.");

namespace kvwire {
namespace {

absl::Status Run() {
  const std::string in = absl::GetFlag(FLAGS_in);
  const std::string out = absl::GetFlag(FLAGS_out);
  if (in.empty() || out.empty()) {
    return absl::InvalidArgumentError("--in and --out are required");
  }
  ASSIGN_OR_RETURN(FuserWeightFormat from,
                   ParseFuserWeightFormat(absl::GetFlag(FLAGS_from)));
  ASSIGN_OR_RETURN(FuserWeightFormat to,
                   ParseFuserWeightFormat(absl::GetFlag(FLAGS_to)));
  const std::string dtype = absl::GetFlag(FLAGS_dtype);
  ProjectorOptions po;
  if (dtype == "keep") {
    po.dtype = at::ScalarType::Undefined;
  } else if (dtype == "bf16") {
    po.dtype = at::kBFloat16;
  } else if (dtype == "fp16") {
    po.dtype = at::kHalf;
  } else if (dtype == "fp32") {
    po.dtype = at::kFloat;
  } else {
    return absl::InvalidArgumentError(absl::StrCat("unknown --dtype ", dtype));
  }
  ASSIGN_OR_RETURN(FuserCheckpoint ckpt, ReadFuserCheckpoint(in, from));
  for (int i = 0; i < ckpt.num_projectors(); ++i) {
    // Validates names and shapes, and converts if asked.
    ASSIGN_OR_RETURN(C2CProjector p,
                     C2CProjector::Create(ckpt.args[i], ckpt.weights[i], po,
                                          absl::GetFlag(FLAGS_strict),
                                          absl::StrCat("projector_", i)));
    ckpt.weights[i] = p.StateDict();
    if (dtype != "keep") {
      ckpt.args[i].dtype = dtype == "bf16"   ? "bfloat16"
                           : dtype == "fp16" ? "float16"
                                             : "float32";
    }
  }
  RETURN_IF_ERROR(WriteFuserCheckpoint(out, ckpt, to));
  std::cout << "converted " << ckpt.num_projectors() << " projectors\n";
  return absl::OkStatus();
}

}  // namespace
}  // namespace kvwire

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Converts a C2C fuser checkpoint between .pt and .safetensors.");
  kvwire::HelpListsFlagsOf({"tools/fuser/convert_main.cc"});
  absl::ParseCommandLine(argc, argv);
  const absl::Status status = kvwire::Run();
  if (!status.ok()) {
    std::cerr << "kvwire-fuser-convert: " << status << "\n";
    return 1;
  }
  return 0;
}
