// Test probe linked against a build's own static libraries (libmtmd.a, libllama.a, libggml*.a), so the
// tests can read what the built llama.cpp makes of an image; llama-mtmd-cli prints no embeddings.
//
//   mtmd_probe embd MODEL MMPROJ IMAGE OUT   the image file as llama-mtmd-cli loads it (stb), encoded:
//                                            OUT = n_tokens x n_embd float32; stdout "n_tokens n_embd"
//   mtmd_probe pixels MMPROJ RGB W H OUT     raw RGB bytes (W x H) through clip.cpp's preprocessing for
//                                            this mmproj: OUT = the normalised 3-channel float32 image,
//                                            stdout "nx ny"
#include "clip.h"
#include "clip-impl.h"
#include "llama.h"
#include "mtmd-helper.h"
#include "mtmd-image.h"
#include "mtmd.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

static void quiet(enum ggml_log_level level, const char * text, void *) {
    if (level >= GGML_LOG_LEVEL_ERROR) {
        fputs(text, stderr);
    }
}

static int fail(const char * what) {
    fprintf(stderr, "mtmd_probe: %s\n", what);
    return 1;
}

static bool write_floats(const char * path, const float * data, size_t n) {
    FILE * f = fopen(path, "wb");
    if (!f) {
        return false;
    }
    bool ok = fwrite(data, sizeof(float), n, f) == n;
    return fclose(f) == 0 && ok;
}

static int embd(const char * model_path, const char * mmproj, const char * image, const char * out) {
    llama_backend_init();
    llama_model_params mp = llama_model_default_params();
    llama_model * model = llama_model_load_from_file(model_path, mp);
    if (!model) {
        return fail("cannot load the model");
    }
    mtmd_context_params p = mtmd_context_params_default();
    p.use_gpu = false;
    p.print_timings = false;
    p.warmup = false;
    p.n_threads = 2;
    mtmd_context * ctx = mtmd_init_from_file(mmproj, model, p);
    if (!ctx) {
        return fail("cannot load the mmproj");
    }
    mtmd_helper_bitmap_wrapper bw = mtmd_helper_bitmap_init_from_file(ctx, image, false, mtmd_helper_init_opt_default());
    if (!bw.bitmap) {
        return fail("cannot load the image");
    }
    std::string prompt = mtmd_default_marker();
    mtmd_input_text text = {prompt.c_str(), prompt.size(), false, true};
    mtmd_input_chunks * chunks = mtmd_input_chunks_init();
    const mtmd_bitmap * bitmaps[1] = {bw.bitmap};
    if (mtmd_tokenize(ctx, chunks, &text, bitmaps, 1) != 0) {
        return fail("mtmd_tokenize failed");
    }
    const int n_embd = llama_model_n_embd_inp(model);
    for (size_t i = 0; i < mtmd_input_chunks_size(chunks); ++i) {
        const mtmd_input_chunk * chunk = mtmd_input_chunks_get(chunks, i);
        if (mtmd_input_chunk_get_type(chunk) != MTMD_INPUT_CHUNK_TYPE_IMAGE) {
            continue;
        }
        if (mtmd_encode_chunk(ctx, chunk) != 0) {
            return fail("mtmd_encode_chunk failed");
        }
        const size_t n_tokens = mtmd_input_chunk_get_n_tokens(chunk);
        if (!write_floats(out, mtmd_get_output_embd(ctx), n_tokens * n_embd)) {
            return fail("cannot write the output");
        }
        printf("%zu %d\n", n_tokens, n_embd);
        mtmd_input_chunks_free(chunks);
        mtmd_bitmap_free(bw.bitmap);
        mtmd_free(ctx);
        llama_model_free(model);
        return 0;
    }
    return fail("no image chunk");
}

static int pixels(const char * mmproj, const char * rgb, int w, int h, const char * out) {
    std::ifstream in(rgb, std::ios::binary);
    std::vector<uint8_t> buf((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (w <= 0 || h <= 0 || buf.size() != (size_t) w * h * 3) {
        return fail("RGB file size does not match W x H x 3");
    }
    clip_context_params cp = {};
    cp.use_gpu = false;
    cp.flash_attn_type = CLIP_FLASH_ATTN_TYPE_AUTO;
    cp.warmup = false;
    clip_init_result res = clip_init(mmproj, cp);
    if (!res.ctx_v) {
        return fail("cannot load the mmproj");
    }
    clip_image_u8 img;
    img.set_size({w, h}, false);
    img.cpy_buf(buf);
    // the preprocessor libmtmd picks for a fixed-size llava-style projector (clip's mlp, no pinpoints)
    mtmd_image_preprocessor_fixed_size pre(res.ctx_v);
    mtmd_image_preproc_out o = pre.preprocess(img);
    if (o.entries.size() != 1) {
        return fail("expected one preprocessed image");
    }
    const clip_image_f32 & f = o.entries[0];
    const std::vector<float> & data = f.get_ro_buf();
    if (!write_floats(out, data.data(), data.size())) {
        return fail("cannot write the output");
    }
    printf("%d %d\n", f.nx(), f.ny());
    clip_free(res.ctx_v);
    return 0;
}

int main(int argc, char ** argv) {
    llama_log_set(quiet, nullptr);
    mtmd_helper_log_set(quiet, nullptr);
    if (argc == 6 && strcmp(argv[1], "embd") == 0) {
        return embd(argv[2], argv[3], argv[4], argv[5]);
    }
    if (argc == 7 && strcmp(argv[1], "pixels") == 0) {
        return pixels(argv[2], argv[3], atoi(argv[4]), atoi(argv[5]), argv[6]);
    }
    fprintf(stderr, "usage: %s embd MODEL MMPROJ IMAGE OUT | pixels MMPROJ RGB W H OUT\n", argv[0]);
    return 2;
}
