"""visualizer.py in a real browser: headless Chromium (Debian's chromium and chromium-driver) through selenium.

The viewer runs as a subprocess on a free port with a tiny snapshot; the test waits for the first full
render, drags nothing but presses End on the "head y" body-pose slider (the page's own keyboard control), and
checks that the picture on the page changes. Environment, for taking the README's picture:
VISUALIZER_NETWORK views that snapshot instead of the tiny one; VISUALIZER_SCREENSHOT saves the final page there.
"""

import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import PIL.Image
import pytest

from tests.tiny_run import write_tiny_snapshot

CHROMIUM, CHROMEDRIVER = '/usr/bin/chromium', '/usr/bin/chromedriver'
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 120  # seconds, the bound of every wait

pytestmark = pytest.mark.skipif(
    not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)),
    reason="needs Debian's chromium and chromium-driver (/usr/bin/chromium, "
    '/usr/bin/chromedriver); setup.sh installs them as root',
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        return probe.getsockname()[1]


def wait_for(condition, what: str, timeout: float = TIMEOUT, poll: float = 0.25):
    """Poll condition() until it returns neither None nor False -> that value; fails the test after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value is not None and value is not False:
            return value
        time.sleep(poll)
    pytest.fail(f'timed out after {timeout} s waiting for {what}')


def picture(element) -> np.ndarray:
    """The element as the browser draws it: uint8 [H, W, 3]."""
    return np.asarray(PIL.Image.open(io.BytesIO(element.screenshot_as_png)).convert('RGB'))


@pytest.fixture
def viewer_url(tmp_path):
    network = os.environ.get('VISUALIZER_NETWORK') or write_tiny_snapshot(str(tmp_path / 'tiny'))[0]
    port = free_port()
    log_path = tmp_path / 'visualizer.log'
    env = dict(os.environ, OMP_NUM_THREADS='1')
    with open(log_path, 'w') as log:
        process = subprocess.Popen(
            [
                sys.executable,
                'visualizer.py',
                '--network',
                network,
                '--port',
                str(port),
                '--device',
                'cpu',
                '--outdir',
                str(tmp_path / 'captures'),
            ],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:

        def ready():
            if process.poll() is not None:
                pytest.fail(f'visualizer.py exited with {process.returncode}:\n{log_path.read_text()}')
            return 'Ctrl-C stops' in log_path.read_text() or None

        wait_for(ready, 'visualizer.py to listen')
        yield f'http://127.0.0.1:{port}'
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)
        assert process.returncode == 0, log_path.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)


@pytest.fixture
def browser():
    pytest.importorskip('selenium', reason='selenium is pinned in requirements.txt')
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault('SE_OFFLINE', 'true')  # selenium-manager must never download a driver or browser
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ('--headless=new', '--no-sandbox', '--disable-dev-shm-usage', '--window-size=1400,900'):
        options.add_argument(argument)
    driver = webdriver.Chrome(
        service=Service(executable_path=shutil.which('chromedriver') or CHROMEDRIVER), options=options
    )
    driver.set_page_load_timeout(TIMEOUT)
    try:
        yield driver
    finally:
        driver.quit()


def test_moving_a_pose_slider_changes_the_picture(viewer_url, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    browser.get(viewer_url)

    def rendered_image():
        readouts = browser.find_elements(By.XPATH, "//*[contains(text(), 'ms,')]")
        images = [
            image
            for image in browser.find_elements(By.TAG_NAME, 'img')
            if (image.get_attribute('src') or '').startswith('blob:') and image.size['width'] > 64
        ]
        return images[0] if images and readouts else None

    def full_render_shown():
        return (
            any(element.text.startswith('full') for element in browser.find_elements(By.XPATH, '//p[strong]')) or None
        )

    image = wait_for(rendered_image, 'the first rendered image')
    wait_for(full_render_shown, 'the first full render')
    before = picture(image)

    label = browser.find_element(By.XPATH, "//label[normalize-space(text())='head y']")
    thumb = browser.find_element(By.ID, label.get_attribute('for')).find_element(By.CSS_SELECTOR, '[role=slider]')
    thumb.send_keys(Keys.END)
    wait_for(lambda: thumb.get_attribute('aria-valuenow') == '1.2' or None, 'the slider to reach its end')

    def changed_and_settled():
        if not full_render_shown() or not browser.find_elements(By.XPATH, "//*[contains(text(), '+1.20')]"):
            return None
        after = picture(rendered_image())
        return after if after.shape != before.shape or np.abs(after.astype(int) - before).mean() > 1 else None

    after = wait_for(changed_and_settled, 'the picture to change after the pose slider moved')
    assert np.abs(after[..., :3].astype(int) - before[..., :3]).max() > 10
    for close in browser.find_elements(By.CSS_SELECTOR, '.mantine-Notification-closeButton'):
        close.click()  # headless Chromium draws WebGL in software, which the page reports in a notification
    wait_for(
        lambda: not browser.find_elements(By.CSS_SELECTOR, '.mantine-Notification-root') or None,
        'the notification to close',
        timeout=10,
    )
    screenshot = tmp_path / 'visualizer.png'
    browser.save_screenshot(str(screenshot))
    assert PIL.Image.open(screenshot).size[0] > 0
    if os.environ.get('VISUALIZER_SCREENSHOT'):
        shutil.copyfile(screenshot, os.environ['VISUALIZER_SCREENSHOT'])
