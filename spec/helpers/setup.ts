/**
 * Loaded by ava in every test process before the test file (package.json "ava.require"), so that `npm test`
 * and `npx ava dist/spec/...` see the same machine without any exports in the shell or in .ci/run:
 *
 * - the webgpu backend is tested on SwiftShader's Vulkan driver when chromium ships it and no driver was
 *   chosen (VK_ICD_FILENAMES / VK_DRIVER_FILES unset) and no hardware GPU was declared (PALIGEMMA_WEBGPU=1);
 *   PALIGEMMA_WEBGPU=0 leaves webgpu out.
 *
 * No imports of the package here: this runs before the test file loads TensorFlow.js.
 */
import { existsSync } from 'node:fs';

const SWIFTSHADER_ICD = '/usr/lib/chromium/vk_swiftshader_icd.json';
const env = process.env;
if (env.VK_ICD_FILENAMES == null && env.VK_DRIVER_FILES == null && env.PALIGEMMA_WEBGPU !== '1' && env.PALIGEMMA_WEBGPU !== '0') {
  if (existsSync(SWIFTSHADER_ICD)) env.VK_ICD_FILENAMES = SWIFTSHADER_ICD;
}
