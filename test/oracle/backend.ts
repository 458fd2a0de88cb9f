import * as tf from '@tensorflow/tfjs-core';
// the union package registers every op's gradient (tfjs-core alone registers a dozen) and the cpu backend
import '@tensorflow/tfjs';
import '@tensorflow/tfjs-backend-cpu';

/** The test oracle's tensor backend: tfjs on its plain-JavaScript cpu backend, with every op's gradient. */
export async function initOracle(): Promise<void> {
  if (tf.getBackend() !== 'cpu') {
    // no banner suggesting the native tfjs backend
    tf.env().set('IS_TEST', true);
    await tf.setBackend('cpu');
    await tf.ready();
  }
}

export { tf };
