import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-core/dist/register_all_gradients.js';
import '@tensorflow/tfjs-backend-cpu';

/** The test oracle's tensor backend: tfjs on its plain-JavaScript cpu backend, with every op's gradient. */
export async function initOracle(): Promise<void> {
  if (tf.getBackend() !== 'cpu') {
    await tf.setBackend('cpu');
    await tf.ready();
  }
}

export { tf };
