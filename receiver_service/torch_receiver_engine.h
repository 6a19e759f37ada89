// The LibTorch side of the receiver that tests share with the engine: how a
// request's GenerationParams become the decoder's GenerationOptions (the
// in-process reference must sample exactly as the service does).
#ifndef KVWIRE_RECEIVER_SERVICE_TORCH_RECEIVER_ENGINE_H_
#define KVWIRE_RECEIVER_SERVICE_TORCH_RECEIVER_ENGINE_H_

#include "common/model/decoder.h"
#include "kvwire/v1/kvwire.pb.h"

namespace kvwire {

// max_new_tokens 0 -> kDefaultMaxNewTokens; top_p 0 -> 1 (off); the rest
// as given (temperature 0: greedy). Stop tokens: the model's
// generation_config.json.
GenerationOptions ToGenerationOptions(const v1::GenerationParams& params);

}  // namespace kvwire

#endif  // KVWIRE_RECEIVER_SERVICE_TORCH_RECEIVER_ENGINE_H_
